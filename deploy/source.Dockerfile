# The Plexus node image built from source, for hosts that can pull images.
# Not built in CI (no registry there); the top-level Dockerfile packages a
# host-built binary instead. From the checkout's root (BuildKit uses
# deploy/source.Dockerfile.dockerignore):
#   docker build -f deploy/source.Dockerfile -t plexus:src .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p plexus-cli \
 && mkdir -p /out/data \
 && cp target/release/plexus /out/plexus \
 && strip /out/plexus \
 && for lib in $(ldd target/release/plexus | grep -o '/[^ ]*'); do \
      mkdir -p "/out$(dirname "$lib")" && cp -L "$lib" "/out$lib"; \
    done

FROM scratch AS release
COPY --from=build /out/ /
COPY --from=build --chown=65532:65532 /out/data/ /data/
USER 65532:65532
WORKDIR /data
VOLUME ["/data"]
EXPOSE 7101 7201
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/plexus", "health", "--quiet", "--connect", "127.0.0.1:7201"]
ENTRYPOINT ["/plexus"]
CMD ["node", "--help"]
