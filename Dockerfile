# wspush in a container: every command of cmd/ built as a static binary
# (CGO_ENABLED=0) and copied onto distroless/static, run as a non-root user.
#
#   docker build -t wspush .
#   docker run --rm -p 127.0.0.1:8080:8080 wspush --demo
#   docker run --rm --entrypoint /usr/local/bin/datacenter wspush --addr :9090
#
# compose.yaml runs a 3-node cluster with Redis and RabbitMQ from this image.
# The image has no shell and no HTTP client, so it declares no HEALTHCHECK:
# probe GET /healthz (the process is up) and GET /readyz (ready to serve;
# 503 while draining or while Redis/RabbitMQ are unreachable) over HTTP from
# the orchestrator (Kubernetes httpGet probes, a load balancer's health
# check). Flags are set as arguments or as WSPUSH_* environment variables.

FROM golang:1.26 AS build
# The golang images pin GOTOOLCHAIN=local; auto lets an image older than
# go.mod's go line fetch that toolchain from the module proxy.
ENV GOTOOLCHAIN=auto CGO_ENABLED=0
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN go build -trimpath -ldflags="-s -w" -o /out/ ./cmd/...

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
# 65532 is distroless's "nonroot"; nothing in the image runs as root.
USER 65532:65532
# 8080: WebSocket (/ws), SSE, the publish API, the dashboard, /metrics,
# /healthz, /readyz. Give --admin-addr :9091 to move /metrics and pprof to
# a private port.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/wspush"]
