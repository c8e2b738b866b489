#!/usr/bin/env python3
"""Builds container images from local files, with no registry and no daemon.

Each image is one layer, written reproducibly (files sorted, owner 0:0, time
0) into a `docker save`-style archive that `ctr images import` takes:

    hack/image.py insights-remote BINARY OUT.tar   the product (see below)
    hack/image.py pause PAUSE_BINARY OUT.tar       the node's sandbox image
    hack/image.py tools OUT.tar                    busybox + kubectl + the
                                                   scripts in hack/node/ (the
                                                   workload, build and scanner
                                                   stand-ins); also writes
                                                   scanner.tar beside it
    hack/image.py inspect ARCHIVE.tar              prints the image config

The product image is what the Dockerfile describes for builders with a
registry: a static binary at /insights-remote, run as 65532:65532, ports
8888, 8080 and 8081, the CA bundle and user database that distroless's
static image carries, nothing else. tests/image.rs holds the two to the same
user, entrypoint and ports.
"""

import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

PRODUCT_NAME = "localhost/insights-remote:dev"
PAUSE_NAME = "localhost/insights-remote/pause:1"
TOOLS_NAME = "localhost/insights-remote/tools:1"
SCANNER_NAME = "localhost/insights-remote/scanner:1"
HERE = os.path.dirname(os.path.abspath(__file__))
NONROOT = "65532:65532"
PASSWD = b"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
GROUP = b"root:x:0:\nnonroot:x:65532:\n"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


class Layer:
    """Files of one layer, by path inside the image."""

    def __init__(self):
        self.entries = {}

    def dir(self, path, mode=0o755):
        self.entries[path.strip("/")] = ("dir", None, mode)

    def file(self, path, data, mode=0o644):
        self._parents(path)
        self.entries[path.strip("/")] = ("file", data, mode)

    def symlink(self, path, target):
        self._parents(path)
        self.entries[path.strip("/")] = ("symlink", target, 0o777)

    def _parents(self, path):
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            self.entries.setdefault(p, ("dir", None, 0o755))

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            for path in sorted(self.entries):
                kind, data, mode = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mode = mode
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    t.addfile(info)
                elif kind == "symlink":
                    info.type = tarfile.SYMTYPE
                    info.linkname = data
                    t.addfile(info)
                else:
                    info.size = len(data)
                    t.addfile(info, io.BytesIO(data))
        return buf.getvalue()


def write_archive(out, name, layer, config):
    layer_tar = layer.tar()
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "hack/image.py", "created": "1970-01-01T00:00:00Z"}],
        "created": "1970-01-01T00:00:00Z",
    }
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = diff_id.split(":")[1] + "/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [name], "Layers": [layer_name]}]
    tmp = out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as t:
        for path, data in (
            (config_name, config_bytes),
            (layer_name, layer_tar),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = 0
            t.addfile(info, io.BytesIO(data))
    os.replace(tmp, out)
    print(f"{name} -> {out} ({len(layer_tar) // 1024} KiB layer)")


def read(path):
    with open(path, "rb") as f:
        return f.read()


def static_elf(path):
    """True if the ELF file has no program interpreter (no dynamic loader)."""
    data = read(path)
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3A], "little")
    for i in range(phnum):
        off = phoff + i * phentsize
        if int.from_bytes(data[off : off + 4], "little") == 3:  # PT_INTERP
            return False
    return True


def product(binary, out):
    if not static_elf(binary):
        sys.exit(f"image.py: {binary} is not a static executable")
    layer = Layer()
    layer.file("/insights-remote", read(binary), 0o555)
    layer.file("/etc/passwd", PASSWD)
    layer.file("/etc/group", GROUP)
    layer.file(CA_BUNDLE, read(CA_BUNDLE))
    layer.dir("/tmp", 0o1777)
    write_archive(
        out,
        PRODUCT_NAME,
        layer,
        {
            "User": NONROOT,
            "Entrypoint": ["/insights-remote"],
            "ExposedPorts": {"8888/tcp": {}, "8080/tcp": {}, "8081/tcp": {}},
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        },
    )


def pause(binary, out):
    layer = Layer()
    layer.file("/pause", read(binary), 0o555)
    write_archive(out, PAUSE_NAME, layer, {"Entrypoint": ["/pause"], "User": "65535:65535"})


def tools(out):
    busybox = "/bin/busybox"
    kubectl = os.environ.get("KUBECTL")
    if not kubectl or not static_elf(kubectl) or not static_elf(busybox):
        sys.exit("image.py: tools needs a static /bin/busybox and KUBECTL (static)")
    layer = Layer()
    layer.file("/bin/busybox", read(busybox), 0o555)
    for applet in ("sh", "wget", "cat", "gzip", "echo", "sleep", "env", "tr", "sed", "test", "id"):
        layer.symlink(f"/bin/{applet}", "busybox")
    layer.file("/bin/kubectl", read(kubectl), 0o555)
    for script in ("lagoon-build", "insights-scanner", "post-insights"):
        layer.file(f"/usr/local/bin/{script}", read(os.path.join(HERE, "node", script)), 0o555)
    for fixture in ("sbom.cyclonedx.json", "image-inspect.json"):
        layer.file(f"/fixtures/{fixture}", read(os.path.join(HERE, "..", "tests", "fixtures", fixture)))
    layer.file("/etc/passwd", PASSWD)
    layer.file("/etc/group", GROUP)
    layer.dir("/tmp", 0o1777)
    write_archive(
        out,
        TOOLS_NAME,
        layer,
        {"User": NONROOT, "Env": ["PATH=/usr/local/bin:/bin", "HOME=/tmp"], "Entrypoint": ["/bin/sh"]},
    )
    # The scanner stand-in: the same layer, started as the scanner.
    write_archive(
        out.replace("tools", "scanner"),
        SCANNER_NAME,
        layer,
        {"User": NONROOT, "Env": ["PATH=/usr/local/bin:/bin", "HOME=/tmp"], "Entrypoint": ["/usr/local/bin/insights-scanner"]},
    )


def inspect(archive):
    with tarfile.open(archive) as t:
        manifest = json.load(t.extractfile("manifest.json"))
        config = json.load(t.extractfile(manifest[0]["Config"]))
        layer = tarfile.open(fileobj=io.BytesIO(t.extractfile(manifest[0]["Layers"][0]).read()))
        files = sorted(m.name for m in layer.getmembers() if not m.isdir())
    print(json.dumps({"name": manifest[0]["RepoTags"][0], "config": config["config"], "files": files}))


def main(argv):
    if len(argv) >= 4 and argv[1] == "insights-remote":
        product(argv[2], argv[3])
    elif len(argv) >= 4 and argv[1] == "pause":
        pause(argv[2], argv[3])
    elif len(argv) >= 3 and argv[1] == "tools":
        tools(argv[2])
    elif len(argv) >= 3 and argv[1] == "inspect":
        inspect(argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
