#!/usr/bin/env bash
# System packages vidtune needs on Debian/Ubuntu: ffmpeg (frame extraction, demo clips) and a Java
# runtime (METEOR in pycocoevalcap). With --slurm also SLURM for the cluster tests, and iproute2 (ip) and
# util-linux (nsenter, unshare) for their two-node cluster of network namespaces.
# Installs only what is missing; needs root (or sudo).
set -euo pipefail
packages=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || packages+=(ffmpeg)
command -v java >/dev/null || packages+=(default-jre-headless)
if [[ "${1:-}" == "--slurm" ]]; then
    command -v slurmctld >/dev/null || packages+=(slurm-wlm slurmdbd munge mariadb-server)
    command -v ip >/dev/null || packages+=(iproute2)
    command -v nsenter >/dev/null && command -v unshare >/dev/null || packages+=(util-linux)
fi
[[ ${#packages[@]} -eq 0 ]] && exit 0
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${packages[@]}"
