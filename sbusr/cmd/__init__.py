"""Console scripts."""

import warnings

# oslo.messaging imports eventlet-era modules that warn on import; that is not our users' concern.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
warnings.filterwarnings("ignore", category=DeprecationWarning, module="oslo_(service|utils|messaging).*")
