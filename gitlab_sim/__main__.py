"""`python -m gitlab_sim serve|demo ...` (the `gitlab-sim` command)"""

from gitlab_sim.cli import main

main()
