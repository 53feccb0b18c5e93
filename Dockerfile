# jitkey broker and worker image.
#   docker build -t jitkey .
#   docker run -e JITKEY_CONFIG=/etc/jitkey/jitkey.yaml -v ./jitkey.yaml:/etc/jitkey/jitkey.yaml:ro jitkey serve
# The entrypoint is the `jitkey` command (`node dist/cli/main.js`); the command picks `serve`
# (API), `worker` (revocation workers) or nothing (both in one process) — or any client
# command (`docker run jitkey tasks --status pending`). Node runs as PID 1 on purpose, not
# under npm or a shell: `docker stop` sends SIGTERM to PID 1, and the broker handles it itself
# (drains HTTP, lets running jobs finish). A wrapper that does not pass the signal on would
# leave the broker to be SIGKILLed mid-request when the stop timeout runs out.

# --- build: all dependencies, compile TypeScript to dist/ ---------------------------------
FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY broker ./broker
COPY adapters ./adapters
COPY jobs ./jobs
COPY cli ./cli
COPY client ./client
RUN npm run build

# --- production dependencies only ----------------------------------------------------------
FROM node:24-bookworm-slim AS prod-deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

# --- runtime: compiled code + prod deps, non-root ---------------------------------------------
FROM node:24-bookworm-slim
ENV NODE_ENV=production \
    JITKEY_DATA_DIR=/data \
    PORT=8080
WORKDIR /app
COPY --from=prod-deps --chown=root:root /app/node_modules ./node_modules
COPY --from=build --chown=root:root /app/dist ./dist
COPY --chown=root:root package.json LICENSE SECURITY.md ./
# The data directory holds the broker's generated signing keys; the only writable path.
RUN mkdir -p /data && chown node:node /data
USER node
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "dist/cli/main.js"]
CMD ["serve"]
