# The agent as a container image: one static (musl) binary and the CA bundle
# on `FROM scratch`. Without a registry, `cargo xtask image` builds the same
# image from a root filesystem it lays out (scripts/container/Containerfile).
#
# Least privilege (what agent/tests/container_image.rs runs the image's
# root filesystem with; the capabilities are the systemd unit's, each one's
# reason is there):
#   docker run --rm --pid=host --network=host \
#     --cap-drop=ALL --cap-add=SYS_ADMIN --cap-add=SYS_PTRACE \
#     --cap-add=DAC_READ_SEARCH --cap-add=KILL \
#     -e OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4317 agent --exe my-service
# One service's PID namespace only (a sidecar), with the same capabilities:
#   docker run --rm --pid=container:my-go-app <capabilities as above> agent --pid 1
# `--privileged` works too and grants far more than the agent uses.
# Docker's default seccomp profile allows bpf() and perf_event_open() to a
# container with CAP_SYS_ADMIN. With --propagate the agent also mounts a
# cgroup2 hierarchy: add `-v /sys/fs/cgroup:/sys/fs/cgroup` on a v1 host.
FROM rust:1.95-bookworm AS build
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      llvm-22-dev libpolly-22-dev musl-tools ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY agent-ebpf/nightly-toolchain agent-ebpf/nightly-toolchain
RUN rustup toolchain install "$(cat agent-ebpf/nightly-toolchain)" --profile minimal --component rust-src \
 && rustup target add x86_64-unknown-linux-musl \
 && LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --locked --no-default-features --features llvm-22
COPY . .
RUN cargo build --release --locked -p agent --target x86_64-unknown-linux-musl \
 && mkdir -p /rootfs/usr/local/bin /rootfs/etc/ssl/certs /rootfs/tmp /rootfs/proc /rootfs/sys \
 && chmod 1777 /rootfs/tmp \
 && cp target/x86_64-unknown-linux-musl/release/agent /rootfs/usr/local/bin/agent \
 && strip --strip-debug /rootfs/usr/local/bin/agent \
 && cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/

FROM scratch
COPY --from=build /rootfs/ /
ENTRYPOINT ["/usr/local/bin/agent"]
