# gitlab-insights: slim image, non-root, migrations then the server.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv
COPY pyproject.toml README.md constraints.txt ./
COPY app ./app
# Exactly the versions CI tests (constraints.txt; `bash .ci/lock` refreshes it). The GitLab
# simulator (gitlab_sim, for tests and the demo) stays out of this production image, so its
# `gitlab-sim` script, which the package declares, is removed: it could only crash here.
# `--version` proves the service's own script runs.
RUN pip install -c constraints.txt . \
    && rm /usr/local/bin/gitlab-sim \
    && gitlab-insights --version \
    && useradd --system --uid 10001 --home-dir /srv --shell /usr/sbin/nologin insights \
    && mkdir -p /srv/data && chown insights /srv/data

USER insights
ENV DATABASE_URL=sqlite+aiosqlite:////srv/data/gitlab-insights.db \
    LOG_FORMAT=json
EXPOSE 8000
VOLUME ["/srv/data"]

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"

# `serve` runs `migrate` first, then uvicorn; no built-in scheduler (README: Docker).
# Exec form: gitlab-insights is PID 1 and receives `docker stop`'s SIGTERM itself (a shell
# would not pass it on); it shuts down gracefully and exits 0.
CMD ["gitlab-insights", "serve", "--host", "0.0.0.0", "--port", "8000"]
