# stageline: the API (`stageline serve`) and workers (`stageline worker`) in one image.
# Built by compose.yaml; on its own:  docker build -t stageline .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the package (not editable), then drop the sources.
WORKDIR /build
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
RUN pip install . && rm -rf /build

# Run as an unprivileged user: Commands actions run as this user too.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin stageline
USER stageline
WORKDIR /home/stageline

EXPOSE 8080
ENTRYPOINT ["stageline"]
# Listening on 0.0.0.0 needs access keys (STAGELINE_ACCESS_KEYS=AKID:SECRET) or --insecure.
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
