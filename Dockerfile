# voxagent image for docker-compose.yml (api, agent and vision workers share it).
# TORCH selects the build: the default CPU wheel for api/agent; for GPU vision workers build with
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
FROM python:3.11-slim
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=""
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
RUN if [ -n "$TORCH_INDEX" ]; then pip install --no-cache-dir "$TORCH" --index-url "$TORCH_INDEX"; \
    else pip install --no-cache-dir "$TORCH"; fi
COPY pyproject.toml README.md ./
COPY api_schemas api_schemas
COPY voxel_ops voxel_ops
COPY vision vision
COPY agent agent
# no training/: a serving image carries no trainer (`voxagent train/eval` say so and exit 2)
COPY service service
COPY cli cli
COPY models models
RUN pip install --no-cache-dir .
# the web page's viewer (NiiVue) from npm, by the lock file; served from here (not copied into the repo)
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm \
    && cd service/web && npm ci --no-audit --no-fund --loglevel=error \
    && apt-get purge -y -qq npm nodejs && apt-get autoremove -y -qq && rm -rf /var/lib/apt/lists/*
ENV VOXAGENT_WEB_NODE_MODULES=/app/service/web/node_modules
RUN useradd --create-home voxagent && mkdir -p /data && chown voxagent /data
USER voxagent
EXPOSE 8000
CMD ["voxagent", "serve", "--host", "0.0.0.0", "--port", "8000"]
