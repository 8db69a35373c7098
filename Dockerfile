# First version; the operations issue adds the health endpoint and its HEALTHCHECK.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN python -m venv /opt/customer-bridge \
 && /opt/customer-bridge/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/customer-bridge --create-home bridge
COPY --from=build /opt/customer-bridge /opt/customer-bridge
ENV PATH=/opt/customer-bridge/bin:$PATH PYTHONUNBUFFERED=1
USER bridge
WORKDIR /var/lib/customer-bridge
VOLUME ["/var/lib/customer-bridge"]
ENTRYPOINT ["bridge"]
CMD ["run", "-c", "/etc/customer-bridge/config.yaml"]
