# One Dockerfile, one image per connector:
#   podman build --target source      -t local/source-perly-stripe:0.1.0 .
#   podman build --target destination -t local/destination-perly:0.1.0 .
# Both start from Airbyte's Python connector base image and run as its non-root user `airbyte`. Both
# also hold every console script of the package (perly, perly-report, perly-webhooks) in
# /opt/perly/bin, on PATH: `--entrypoint perly` runs a sync outside Airbyte.
ARG BASE_IMAGE=docker.io/airbyte/python-connector-base:4.0.0

FROM ${BASE_IMAGE} AS install
USER root
# A virtualenv keeps the install independent of how the base image's Python is packaged.
RUN python3 -m venv /opt/perly
ENV PATH=/opt/perly/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /airbyte/integration_code
# Dependencies first, against empty packages (and an empty README, which pyproject names), so code
# and doc edits do not re-download them. Their build/ goes too: its empty files are newer than the
# copied code and setuptools would install them instead.
COPY pyproject.toml ./
RUN mkdir -p source_perly_stripe destination_perly perly_runner stripe_vocabulary connector_spec \
    && touch README.md source_perly_stripe/__init__.py destination_perly/__init__.py perly_runner/__init__.py \
        stripe_vocabulary/__init__.py connector_spec/__init__.py \
    && pip install -q . \
    && pip uninstall -q -y perly-stripe \
    && rm -rf build *.egg-info
COPY README.md ./
COPY source_perly_stripe ./source_perly_stripe
COPY destination_perly ./destination_perly
COPY perly_runner ./perly_runner
COPY stripe_vocabulary ./stripe_vocabulary
COPY connector_spec ./connector_spec
RUN pip install -q --no-deps . && rm -rf build *.egg-info

FROM ${BASE_IMAGE} AS runtime
COPY --from=install /opt/perly /opt/perly
ENV PATH=/opt/perly/bin:$PATH
WORKDIR /airbyte/integration_code

FROM runtime AS source
ARG VERSION=0.1.0
ENV AIRBYTE_ENTRYPOINT="/opt/perly/bin/source-perly-stripe"
LABEL io.airbyte.name=local/source-perly-stripe io.airbyte.version=${VERSION}
USER airbyte
ENTRYPOINT ["/opt/perly/bin/source-perly-stripe"]

FROM runtime AS destination
ARG VERSION=0.1.0
USER root
# The SQLite store lives on a volume (Airbyte's Docker Compose deployments mount their local root at
# /local).
RUN mkdir -p /local && chown airbyte:airbyte /local
VOLUME /local
ENV AIRBYTE_ENTRYPOINT="/opt/perly/bin/destination-perly"
LABEL io.airbyte.name=local/destination-perly io.airbyte.version=${VERSION}
USER airbyte
ENTRYPOINT ["/opt/perly/bin/destination-perly"]
