# A runnable Carmine image (Debian bookworm). The OSD needs the host's hugepages and, for PCI
# devices, vfio: run it privileged with /dev/hugepages (and /dev/vfio) mounted, e.g.
#   docker build -t carmine .
#   docker run --rm --privileged -v /dev/hugepages:/dev/hugepages carmine carmine-osd selfcheck
#
# The build stage fetches the pinned SPDK/DPDK source through apt (deb-src only, see
# scripts/fetch-spdk-source) and builds it, exactly as scripts/setup does on a host.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN scripts/setup && cargo build --release --locked --workspace --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
        libnuma1 libaio1 libuuid1 libssl3 iproute2 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/carmine-osd /usr/local/bin/
COPY --from=build /src/target/release/carmine-mon /usr/local/bin/
COPY --from=build /src/target/release/carmine /usr/local/bin/
COPY hugepages/hugepages.sh /usr/local/lib/carmine/hugepages.sh
CMD ["carmine-osd", "--help"]
