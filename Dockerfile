# The agent as a container image. Run it privileged, sharing the target's PID
# namespace, e.g. beside a Go service in the same pod or:
#   docker run --rm --privileged --pid=container:my-go-app \
#     -e OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4317 agent --pid 1
FROM rust:1.95-bookworm AS build
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      llvm-22-dev libpolly-22-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY agent-ebpf/nightly-toolchain agent-ebpf/nightly-toolchain
RUN rustup toolchain install "$(cat agent-ebpf/nightly-toolchain)" --profile minimal --component rust-src \
 && LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --locked --no-default-features --features llvm-22
COPY . .
RUN cargo build --release --locked -p agent

FROM debian:bookworm-slim
COPY --from=build /src/target/release/agent /usr/local/bin/agent
ENTRYPOINT ["/usr/local/bin/agent"]
