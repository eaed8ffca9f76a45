# Run beside `CI=true bash .ci/run` in a clean clone at /tmp/ccd (started before it, 2026-12-07,
# Zen 5): the disk's use, pytest's temporary folders and the clone's size, in MiB, every 30 s.
while true; do echo "$(date +%T) used=$(df -BM --output=used / | tail -1 | tr -d ' ') pytest=$(du -sm /tmp/pytest-of-root 2>/dev/null | cut -f1) clone=$(du -sm /tmp/ccd 2>/dev/null | cut -f1)"; sleep 30; done
