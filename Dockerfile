# syntax=docker/dockerfile:1
# One small image with every ghlcancel command: worker, intake, enqueue,
# sandbox. Static binaries (CGO off) on distroless/static (CA certificates,
# tzdata, no shell), running as the non-root user 65532.
FROM golang:1.26.10-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/ ./cmd/worker ./cmd/intake ./cmd/enqueue ./cmd/sandbox
# Owned by the runtime user, so a named volume mounted here is writable
# (the demo sandbox writes its ids and tokens to /shared).
RUN mkdir -p /out/shared && chown 65532:65532 /out/shared

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/worker /out/intake /out/enqueue /out/sandbox /usr/local/bin/
COPY --from=build --chown=65532:65532 /out/shared /shared
USER 65532:65532
# worker metrics, intake API, demo sandbox
EXPOSE 9464 8080 8089
CMD ["worker"]
