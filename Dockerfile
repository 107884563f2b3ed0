# kldrift image: built with the same install script and CMake commands as CI (deploy/build.sh).
# No Docker engine runs on the development machines; keep these steps identical to what CI runs.

FROM debian:12 AS build
WORKDIR /src
COPY . .
# Same script as the README and CI: installs missing Debian packages, builds Release.
RUN bash deploy/build.sh -DKLDRIFT_BUILD_TESTS=OFF -DKLDRIFT_BUILD_BENCHMARKS=OFF \
 && cmake --install build/release --prefix /opt/kldrift

FROM debian:12 AS runtime
COPY deploy/install-deps.sh /tmp/install-deps.sh
RUN bash /tmp/install-deps.sh --runtime && rm -rf /var/lib/apt/lists/* /tmp/install-deps.sh \
 && useradd --system --uid 10001 --home-dir /var/lib/kldrift --create-home kldrift \
 && install -d -o kldrift -g kldrift /var/lib/kldrift/data
COPY --from=build /opt/kldrift/bin/ /usr/local/bin/
COPY deploy/examples/ /usr/share/kldrift/examples/
USER kldrift
WORKDIR /var/lib/kldrift
EXPOSE 50051 9464
# A real RPC with a deadline: fails unless kldriftd is serving.
HEALTHCHECK --interval=10s --timeout=5s CMD ["kldrift", "--server", "127.0.0.1:50051", "--timeout", "3s", "reference", "list", "--json"]
VOLUME /var/lib/kldrift/data
ENTRYPOINT ["kldriftd", "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9464", "--data-dir", "/var/lib/kldrift/data"]
