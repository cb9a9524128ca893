"""Policy: pure Python over discovered records. The config and its watch, selectors, pools with sticky health,
and IOMMU-group-aware allocation. No sysfs reads and no gRPC here."""
