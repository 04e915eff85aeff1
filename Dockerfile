# syntax=docker/dockerfile:1
# Build: docker build -t daraja-edge .
# Run:   docker run -p 8443:8443 -v $PWD/config.yaml:/etc/daraja-edge/config.yaml:ro \
#          -v daraja-data:/var/lib/daraja-edge daraja-edge
# Base images are pinned by digest (the tag says which release it is); to
# move to a newer one: docker buildx imagetools inspect golang:1.26.8-bookworm
# (and gcr.io/distroless/static-debian12:nonroot), then replace the digest.
FROM golang:1.26.8-bookworm@sha256:a688600ca24f8a4d3ca77f95b0dd40704a9fc787c826660eb7ba0b641b8b175d AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" -o /out/daraja-edge .

FROM gcr.io/distroless/static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab
ARG VERSION=dev
ARG COMMIT=unknown
LABEL org.opencontainers.image.title="daraja-edge" \
      org.opencontainers.image.description="A vetting, durable edge in front of Safaricom Daraja (M-Pesa) callback URLs" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}"
COPY --from=build /out/daraja-edge /usr/local/bin/daraja-edge
# Relative paths in the config (./data/…) resolve under the data volume.
WORKDIR /var/lib/daraja-edge
VOLUME ["/var/lib/daraja-edge"]
EXPOSE 8443 9090
USER nonroot:nonroot
HEALTHCHECK --interval=10s --timeout=6s --retries=3 \
  CMD ["/usr/local/bin/daraja-edge", "health", "--config", "/etc/daraja-edge/config.yaml"]
ENTRYPOINT ["/usr/local/bin/daraja-edge"]
CMD ["serve", "--config", "/etc/daraja-edge/config.yaml"]
