"""Installing a Debian package the tests need (Chromium, PostgreSQL, MariaDB) when it is missing.

The suite brings its own real parts: a fresh machine gets them from apt the first time a test asks.
"""

from __future__ import annotations

import os
import shutil
import subprocess

#: seconds one apt-get step may take (a first install on a slow mirror)
INSTALL_TIMEOUT = 900.0


def apt_install(what: str, *packages: str) -> str:
    """Install ``packages`` with apt-get; an empty string on success, else why it could not be done.

    ``what`` names the part in the reasons ("PostgreSQL"). Waits for another apt run's lock (parallel
    test workers may install at the same time), and refreshes an old package list once.
    """
    if os.geteuid() != 0:
        return f"{what} is not installed and the tests do not run as root to install it"
    if shutil.which("apt-get") is None:
        return f"{what} is not installed and there is no apt-get to install it with"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    install = ["apt-get", *lock, "install", "-y", "--no-install-recommends", *packages]
    named = " ".join(packages)
    try:
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
        if done.returncode != 0:  # an old or empty package list: refresh it once and retry
            subprocess.run(["apt-get", *lock, "update"], env=env, capture_output=True,
                           timeout=INSTALL_TIMEOUT)
            done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"apt-get install {named} failed: {exc}"
    if done.returncode != 0:
        return f"apt-get install {named} failed ({done.returncode}): {done.stderr.strip()[-500:]}"
    return ""
