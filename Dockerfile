# Production image of tally: build in rust:1.95, run on debian:bookworm-slim.
FROM rust:1.95 AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tally

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /src/target/release/tally /usr/local/bin/tally
COPY config/ /etc/tally/
ENV TALLY_CONFIG=/etc/tally/tally.toml
ENTRYPOINT ["tally"]
CMD ["run"]
