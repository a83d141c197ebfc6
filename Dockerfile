# The example server (examples/twilio_server.rs) in a small runtime image.
#
#   docker build -t twilio-realtime .
#   docker run --rm -p 5050:5050 -e OPENAI_API_KEY=sk-... -e PUBLIC_URL=https://calls.example.com \
#     -e TWILIO_AUTH_TOKEN=... twilio-realtime
#
# Every setting is an environment variable (README, "Going live"). SIGTERM drains: /readyz
# answers 503 at once, live calls finish, the process exits when the last one has ended.

# --- build ---------------------------------------------------------------------------------
# The library's MSRV is 1.85; the example is built with its dev-dependencies (the simulator
# feature, progress bars), some of which need a newer compiler: use a current stable.
FROM rust:1.95-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --example twilio_server \
 && cp target/release/examples/twilio_server /twilio_server \
 && strip /twilio_server

# --- run -----------------------------------------------------------------------------------
FROM debian:bookworm-slim
# OpenSSL (native-tls) for wss://api.openai.com and the CA roots to verify it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin bridge
COPY --from=build /twilio_server /usr/local/bin/twilio_server
USER 10001
# Listen on every interface inside the container (the server's own default is 127.0.0.1).
ENV BIND_ADDR=0.0.0.0 \
    PORT=5050 \
    RUST_LOG=info
EXPOSE 5050
# The server drains on SIGTERM (what `docker stop` and Kubernetes send); give it time with
# `docker stop -t` / terminationGracePeriodSeconds longer than your longest call.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/twilio_server"]
