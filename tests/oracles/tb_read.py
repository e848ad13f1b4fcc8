"""Independent reader of vqlab's TensorBoard output, with TensorBoard's own code.

Usage: tb_read.py SWEEP_DIR [--server]
For every <run>/tb under SWEEP_DIR, EventAccumulator loads the event files; the script prints
JSON with each run's scalars, images, histograms, text and HParams plugin data. With --server
it also starts a real `tensorboard` on a free loopback port and asks its HParams plugin for the
session groups (what the HParams tab shows)."""
import glob
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

sweep = sys.argv[1]
out = {"runs": {}}
for tb in sorted(glob.glob(os.path.join(sweep, "*", "tb"))):
    run = os.path.basename(os.path.dirname(tb))
    acc = EventAccumulator(tb, size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    r = {
        "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
        "images": {t: [[e.step, e.width, e.height, len(e.encoded_image_string)] for e in acc.Images(t)] for t in tags["images"]},
        "histograms": {
            t: [[e.step, e.histogram_value.num, list(e.histogram_value.bucket)] for e in acc.Histograms(t)]
            for t in tags["histograms"]
        },
        "text": {},
        "hparams": {},
    }
    for tag in acc.PluginTagToContent("text"):
        r["text"][tag] = acc.Tensors(tag)[-1].tensor_proto.string_val[0].decode()
    for tag, content in acc.PluginTagToContent("hparams").items():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        kind = data.WhichOneof("data")
        if kind == "experiment":
            r["hparams"]["experiment"] = {
                "hparams": [h.name for h in data.experiment.hparam_infos],
                "metrics": [m.name.tag for m in data.experiment.metric_infos],
            }
        elif kind == "session_start_info":
            hp = {}
            for k, v in data.session_start_info.hparams.items():
                hp[k] = getattr(v, v.WhichOneof("kind"))
            r["hparams"]["session_start"] = hp
        elif kind == "session_end_info":
            r["hparams"]["session_end"] = api_pb2.Status.Name(data.session_end_info.status)
    out["runs"][run] = r

if "--server" in sys.argv:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            sweep,
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--reload_interval",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        body = json.dumps(
            {
                "experimentName": "",
                "allowedStatuses": ["STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING", "STATUS_UNKNOWN"],
                "colParams": [],
                "startIndex": 0,
                "sliceSize": 1000,
            }
        ).encode()
        groups = None
        last_error = None
        # Generous: on a loaded 2-core machine (the suite runs tests in parallel) TensorBoard
        # has been seen to need more than 90 s to start and load four runs.
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/data/plugin/hparams/session_groups",
                    data=body,
                    headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"},
                )
                groups = json.load(urllib.request.urlopen(req, timeout=10))
                if len(groups.get("sessionGroups", [])) >= len(out["runs"]):
                    break
            except Exception as e:
                last_error = e
            time.sleep(1)
        if groups is None or len(groups.get("sessionGroups", [])) < len(out["runs"]):
            print(f"tb_read: TensorBoard's HParams tab listed {groups} after 300 s (last error: {last_error})", file=sys.stderr)
        out["session_groups"] = [
            {
                "name": g["name"],
                "hparams": g["hparams"],
                "metrics": {m["name"]["tag"]: m["value"] for m in g["metricValues"]},
                "status": [s.get("status") for s in g["sessions"]],
            }
            for g in (groups or {}).get("sessionGroups", [])
        ]
    finally:
        proc.kill()
        proc.wait()

print(json.dumps(out))
