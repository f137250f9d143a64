# The worker's image: `worker run`, `worker simulate`, `worker topics create`, … (the
# entry point is the `worker` command; the compose file gives each service its command).
#
#   docker build -t worker:local .
#   docker run --rm worker:local --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# river and confluent-kafka (with librdkafka inside) come as manylinux wheels: no compiler needed
COPY pyproject.toml README.md ./
COPY worker ./worker
RUN pip install . && useradd --system --uid 10001 --home-dir /app worker && chown worker /app

USER worker
EXPOSE 9108
ENTRYPOINT ["worker"]
CMD ["--help"]
