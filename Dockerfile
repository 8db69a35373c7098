# customer-bridge in a container. docs/operations.md has the run command and the config it needs
# (health.host 0.0.0.0 so that `docker run -p` reaches it; the spool in the volume).
# Both stages use the same image: the venv's python is a link to the base image's interpreter.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# The dependency layer first, from pyproject.toml alone: a code change rebuilds only the layer
# below. Production dependencies only; the embedded broker (the `embedded` extra) stays out.
COPY pyproject.toml ./
RUN python -m venv /opt/customer-bridge \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && /opt/customer-bridge/bin/pip install -r /tmp/requirements.txt
# The code. No .git in the build context: `customer-bridge --version` shows the commit passed as
#   docker build --build-arg GIT_COMMIT=$(git rev-parse --short=12 HEAD) .
ARG GIT_COMMIT=
COPY README.md LICENSE setup.py ./
COPY bridge ./bridge
RUN CUSTOMER_BRIDGE_COMMIT="${GIT_COMMIT}" /opt/customer-bridge/bin/pip install --no-deps . \
 && ! /opt/customer-bridge/bin/python -c "import amqtt" 2>/dev/null

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --shell /usr/sbin/nologin \
        --home-dir /var/lib/customer-bridge --create-home bridge \
 && chmod 0700 /var/lib/customer-bridge \
 && mkdir -p /etc/customer-bridge
COPY --from=build /opt/customer-bridge /opt/customer-bridge
ENV PATH=/opt/customer-bridge/bin:$PATH PYTHONUNBUFFERED=1
USER bridge
WORKDIR /var/lib/customer-bridge
# The spool (spool.path: /var/lib/customer-bridge/spool.db): what was acknowledged to the broker
# but not yet delivered lives here, so it must outlive the container.
VOLUME ["/var/lib/customer-bridge"]
EXPOSE 9108
# No curl in the slim image; python is at hand. Inside the container 127.0.0.1 reaches the
# listener whether it binds 127.0.0.1 or 0.0.0.0. Change the port here if health.port changes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4)"]
# SIGTERM drains for up to 30 s: run with --stop-timeout 45 (Docker's default is 10 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["customer-bridge"]
CMD ["run", "-c", "/etc/customer-bridge/config.yaml"]
