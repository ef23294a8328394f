# tenantkit serve in a container: the shim on port 8000, settings in /etc/tenantkit.
#
#   docker build -t tenantkit .
#   docker run -p 8000:8000 -v /etc/tenantkit:/etc/tenantkit:ro \
#       -v /srv/tenantkit/cache:/srv/tenantkit/cache tenantkit
#
# The cache volume is the one nginx serves from: give it the group nginx reads with
# ([cache] group, `tenantkit provision --group www-data`). Run the invalidator from the same
# image: docker run ... tenantkit invalidator
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TENANTKIT_CONFIG=/etc/tenantkit/tenantkit.toml

WORKDIR /opt/tenantkit
COPY pyproject.toml setup.cfg constraints.txt README.md LICENSE ./
COPY tenantkit ./tenantkit
# Debian's base image has the www-data group (gid 33), as the nginx package on the host does.
RUN pip install --no-cache-dir -c constraints.txt '.[server]' \
    && useradd --system --uid 10001 --gid www-data --no-create-home tenantkit

USER tenantkit
EXPOSE 8000
ENTRYPOINT ["tenantkit"]
CMD ["serve", "--bind", "0.0.0.0:8000", "--workers", "4"]
