# stageline: the API (`stageline serve`) and workers (`stageline worker`) in one image.
# Built by compose.yaml; on its own:  docker build -t stageline .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Tools a Commands action expects to find (git, curl); curl also serves the healthchecks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Pinned dependencies (no test-only packages, no embedded Redis), then the package itself
# built with the pinned setuptools (no build isolation: nothing unpinned is fetched).
WORKDIR /build
COPY requirements/image.txt ./requirements.txt
RUN pip install -r requirements.txt
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
RUN pip install --no-deps --no-build-isolation . && rm -rf /build

# Run as an unprivileged user: Commands actions run as this user too. The demo directory
# (examples/pipeline.json, README) is shared between the worker containers by compose.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin stageline \
 && install -d -o stageline -g stageline -m 700 /tmp/stageline-demo-10001
USER stageline
WORKDIR /home/stageline

EXPOSE 8080
ENTRYPOINT ["stageline"]
# Listening on 0.0.0.0 needs access keys (STAGELINE_ACCESS_KEYS=AKID:SECRET) or --insecure.
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
