"""A results gallery: ``python -m threestudio.gallery [outputs/] [--port 8080]``.

One local, read-only web page lists every trial under the folder (recipe, prompt or dataroot, status, steps, training
time, best metric; filters by recipe, text and status) and shows each trial's videos, validation grids over steps,
exported GLB meshes in an interactive viewer (Google's ``<model-viewer>``, vendored), 3DGS PLY files in a splat
viewer (gsplat.js, vendored), loss and metric curves from ``csv_logs/metrics.csv``, the resolved config with the
keys the command line set highlighted, and the commands that resume, test or export it; two trials side by side.
``--export SITE`` writes a static copy to share. No internet, no extra Python packages.
"""
