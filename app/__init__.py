"""gitlab-insights: keeps GitLab activity fresh in a database."""

__version__ = "0.1.0"
