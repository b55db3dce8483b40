# A runnable Carmine image (Debian bookworm). The OSD needs the host's hugepages and, for PCI
# devices, vfio: run it privileged with /dev/hugepages (and /dev/vfio) mounted, e.g.
#   podman run --rm --privileged -v /dev/hugepages:/dev/hugepages carmine carmine-osd selfcheck
#
# Two ways to get the binaries, one target each:
#   --target image (the default): the `build` stage compiles the workspace and the pinned
#     SPDK/DPDK inside the container (scripts/setup, exactly as on a host: it fetches the SPDK
#     source through apt, deb-src only). Needs the network and takes long (the SPDK/DPDK build
#     alone is about 5 min on 2 cores, the Rust build more).
#   --target image-prebuilt: copies binaries built on the host from the build context's bin/
#     (scripts/container-image lays out that context: bin/, hugepages/). Takes seconds.
# The bases are build arguments, so that an image made locally can stand in for a registry's
# (scripts/container-image makes BASE with debootstrap and `podman import`):
#   BUILD_BASE  a Debian bookworm image with Rust (only the `image` target uses it)
#   BASE        a Debian bookworm image; the runtime libraries are installed unless present
ARG BUILD_BASE=rust:1-bookworm
ARG BASE=debian:bookworm-slim

FROM ${BUILD_BASE} AS build
WORKDIR /src
COPY . .
RUN scripts/setup \
    && cargo build --release --locked -p carmine-osd -p carmine-mon -p carmine-cli \
    && mkdir -p /out \
    && cp target/release/carmine-osd target/release/carmine-mon target/release/carmine /out/

FROM scratch AS prebuilt
COPY bin/carmine-osd bin/carmine-mon bin/carmine /out/

FROM ${BASE} AS runtime
# libaio, libuuid, libnuma: what the binaries link; iproute2: `carmine-osd selfcheck` makes a
# veth pair. Installed only if missing (a base made without network access already has them).
RUN missing=; \
    for p in libnuma1 libaio1 libuuid1 iproute2 ca-certificates; do \
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"; \
    done; \
    if [ -n "$missing" ]; then \
        apt-get update && apt-get install -y --no-install-recommends $missing \
        && rm -rf /var/lib/apt/lists/*; \
    fi
COPY hugepages/hugepages.sh /usr/local/lib/carmine/hugepages.sh

FROM runtime AS image-prebuilt
COPY --from=prebuilt /out/ /usr/local/bin/
CMD ["carmine-osd", "--help"]

FROM runtime AS image
COPY --from=build /out/ /usr/local/bin/
CMD ["carmine-osd", "--help"]
