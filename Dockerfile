# The Plexus node image.
#
# Default target: the `plexus` binary built on the host, in `FROM scratch`.
# Build it with deploy/image.sh, which stages the binary into
# target/docker-image/ (plus, for a glibc build, the shared libraries `ldd`
# lists and the loader, at their paths) and runs `docker build`. Nothing is
# pulled, so it builds where no registry is reachable, with BuildKit or the
# legacy builder (which builds every stage of a file: that is why the
# from-source build, which pulls `rust`, lives in deploy/source.Dockerfile).
#
#   deploy/image.sh plexus:local
#   docker run --rm plexus:local node --help
FROM scratch AS release
COPY target/docker-image/rootfs/ /
# /data belongs to the node's user, so a named volume mounted there does too.
COPY --chown=65532:65532 target/docker-image/data/ /data/
# Non-root. A numeric uid: a scratch image has no /etc/passwd to look a name up.
USER 65532:65532
WORKDIR /data
VOLUME ["/data"]
# 7101 cluster (ractor_cluster, cookie-authenticated), 7201 HTTP API.
EXPOSE 7101 7201
# Liveness without a shell or a token; the API must listen on 7201 inside
# the container (override with `--health-cmd` or the orchestrator's probe).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/plexus", "health", "--quiet", "--connect", "127.0.0.1:7201"]
ENTRYPOINT ["/plexus"]
CMD ["node", "--help"]
