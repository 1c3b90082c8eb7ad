# The apalis daemon in an image: mount your config at /etc/apalis/config.toml.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md CHANGELOG.md ./
COPY apalis_cli ./apalis_cli
COPY backends ./backends
RUN pip install '.[all]' && rm -rf /src

RUN useradd --create-home --uid 10001 apalis && mkdir -p /etc/apalis /var/lib/apalis \
    && chown apalis:apalis /var/lib/apalis
USER apalis
WORKDIR /var/lib/apalis

ENTRYPOINT ["apalis"]
CMD ["run", "--config", "/etc/apalis/config.toml"]
