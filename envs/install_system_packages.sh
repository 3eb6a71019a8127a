#!/usr/bin/env bash
# System packages vidtune needs on Debian/Ubuntu: ffmpeg (frame extraction, demo clips) and a Java
# runtime (METEOR in pycocoevalcap). With --slurm also a one-node SLURM for the cluster tests.
# Installs only what is missing; needs root (or sudo).
set -euo pipefail
packages=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || packages+=(ffmpeg)
command -v java >/dev/null || packages+=(default-jre-headless)
if [[ "${1:-}" == "--slurm" ]]; then
    command -v slurmctld >/dev/null || packages+=(slurm-wlm slurmdbd munge mariadb-server)
fi
[[ ${#packages[@]} -eq 0 ]] && exit 0
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${packages[@]}"
