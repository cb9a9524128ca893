"""The DRA transport: kubelet plugin registration, the DRAPlugin service (Prepare/Unprepare as CDI specs), and
ResourceSlices published through the API server. Generated stubs live in `v1/`, `v1beta1/`, `pluginregistration/`.
"""
