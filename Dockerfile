# polyregion replicator image. Build: docker build -t polyregion .
# Run: docker run -v /etc/polyregion:/etc/polyregion:ro -p 7480:7480 -p 7481:7481 polyregion
# (the config's http.listen must be 0.0.0.0:7481 for probes from outside).

FROM golang:1.26-bookworm AS build
WORKDIR /src
# A static binary for the distroless base.
ENV CGO_ENABLED=0
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The same build as `make build`.
RUN go build -o bin/polyregion ./cmd/polyregion

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/bin/polyregion /usr/local/bin/polyregion
USER nonroot:nonroot
# 7480: link to peers (HTTP/2, TLS); 7481: /health, /live, /metrics.
EXPOSE 7480 7481
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/polyregion"]
CMD ["run", "--config", "/etc/polyregion/region.yaml"]
