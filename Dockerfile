# A Sirocco sidecar host on CPU: `sirocco serve` on port 8080 (docs/deploy.md).
#
#   docker build -t sirocco-sidecar .
#   docker run -d -p 8080:8080 -v sirocco-data:/data -v /srv/models:/models:ro \
#     -e SIROCCO_SIDECAR_SECRET -e SIROCCO_METRICS_TOKEN sirocco-sidecar \
#     --host 0.0.0.0 --port 8080 --region eu-west --model /models/mistral-7b-int4
#
# Without arguments it serves the two demo models. Put TLS in front of it: the edge must reach it over https.

# Build stage: the full node image has python3, make and g++, which `npm ci` uses to build the native
# expert kernel (binding.gyp); the runtime image does without them.
FROM node:20 AS build
WORKDIR /app
# Only what the sidecar runs (the edge deploys to Cloudflare, not here); no CUDA download on CPU hosts.
COPY package.json package-lock.json .npmrc binding.gyp ./
COPY scripts/build-native.mjs ./scripts/
COPY sidecar/engine/native ./sidecar/engine/native
RUN ONNXRUNTIME_NODE_INSTALL=skip npm ci --omit=dev --no-audit --no-fund && test -f build/Release/block_gemm.node

FROM node:20-slim
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/build/Release/block_gemm.node ./build/Release/block_gemm.node
COPY package.json ./
COPY bin ./bin
COPY cli ./cli
COPY shared ./shared
COPY sidecar ./sidecar

# Demo models, converted stores and Mixtral's expert files: kept across container restarts.
ENV SIROCCO_HOME=/data
RUN mkdir -p /data && chown node:node /data
VOLUME ["/data"]

USER node
EXPOSE 8080
# /health answers without a signature; --start-period covers loading the models.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:8080/health').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

# --single-threaded-gc: V8's collector on the JS thread, off the cores the engine computes on (cli/processes.ts).
ENTRYPOINT ["node", "--single-threaded-gc", "bin/sirocco.mjs", "serve"]
CMD ["--host", "0.0.0.0", "--port", "8080"]
