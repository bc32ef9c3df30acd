# Runtime Manager's own image. No registry is reachable, so there is no builder stage: `make image`
# builds the static binary on the host (CGO_ENABLED=0) and this file only packs it.
#
# Run it on the game network with the Docker socket and the state root mounted at the same path
# as on the host (bind-mount sources are resolved by the daemon), for example:
#   docker run --network galaxy-net -v /var/run/docker.sock:/var/run/docker.sock \
#     -v /var/lib/galaxy/games:/var/lib/galaxy/games --add-host host.docker.internal:host-gateway \
#     -e RTMANAGER_GAME_STATE_ROOT=/var/lib/galaxy/games ... galaxy/rtmanager:<version>
FROM scratch
COPY bin/rtmanager-linux /rtmanager
USER 65532:65532
EXPOSE 8096
ENTRYPOINT ["/rtmanager"]
