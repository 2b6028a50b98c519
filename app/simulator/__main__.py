"""`python -m app.simulator --port P --seed S ...`"""

from app.simulator.cli import main

main()
