# The function image: FastAPI behind Mangum, served by awslambdaric; locally the Runtime Interface
# Emulator (RIE) sits in front of it, so `docker run -p 9000:8080 IMAGE` serves invocations.
ARG BASE_IMAGE=python:3.12-slim

# --- the emulator binary, from the aws-sam-cli wheel on PyPI (or GitHub's release with RIE_SOURCE=github)
FROM ${BASE_IMAGE} AS rie
ARG RIE_SOURCE=pypi
ARG SAM_CLI_VERSION=1.170.0
WORKDIR /tmp/rie
RUN set -eu; \
    case "$(uname -m)" in aarch64|arm64) name=aws-lambda-rie-arm64 ;; *) name=aws-lambda-rie-x86_64 ;; esac; \
    if [ "$RIE_SOURCE" = github ]; then \
        python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], "aws-lambda-rie")' \
            "https://github.com/aws/aws-lambda-runtime-interface-emulator/releases/latest/download/$name"; \
    else \
        python3 -m venv /tmp/pip && \
        /tmp/pip/bin/pip download --quiet --no-deps --no-cache-dir --dest wheel "aws-sam-cli==${SAM_CLI_VERSION}" && \
        python3 -c 'import glob, sys, zipfile; open("aws-lambda-rie", "wb").write(zipfile.ZipFile(glob.glob("wheel/*.whl")[0]).read("samcli/local/rapid/" + sys.argv[1]))' "$name"; \
    fi; \
    chmod 0755 aws-lambda-rie

# --- dependencies in their own layer, before the code
FROM ${BASE_IMAGE} AS deps
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/venv && \
    /opt/venv/bin/pip install --quiet --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt

# --- the function as AWS Lambda runs it (Lambda ignores USER: it always runs functions as its own
#     unprivileged user). `sam build` builds this stage (template.yaml: DockerBuildTarget), because
#     `sam local` adds its emulator on top with a RUN step (mv, chmod) that fails as a non-root USER.
FROM ${BASE_IMAGE} AS function
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LAMBDA_TASK_ROOT=/var/task \
    PYTHONPATH=/var/task \
    DATA_DIR=/var/task/data \
    AWS_LAMBDA_LOG_FORMAT=JSON
COPY --from=deps /opt/venv /opt/venv
COPY --from=rie /tmp/rie/aws-lambda-rie /usr/local/bin/aws-lambda-rie
WORKDIR /var/task
COPY handler/entrypoint.sh /usr/local/bin/lambda-entrypoint.sh
COPY etl_core/ etl_core/
COPY handler/ handler/
# bytecode made once here: /var/task is read-only on Lambda, so every cold start would compile
# the modules again (checked-hash: a changed source is still noticed)
RUN python3 -m compileall -q --invalidation-mode checked-hash etl_core handler
COPY data/ data/
ENTRYPOINT ["/usr/local/bin/lambda-entrypoint.sh"]
CMD ["handler.lambda_function.handler"]

# --- the default target, for `docker run`: the same image, as an unprivileged user
FROM function
USER 10001:10001
