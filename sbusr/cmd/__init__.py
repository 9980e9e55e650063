"""Console scripts."""

import os
import warnings

# oslo.messaging imports eventlet-era modules that warn on import; that is not our users' concern.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
warnings.filterwarnings("ignore", category=DeprecationWarning, module="oslo_(service|utils|messaging).*")

# oslo.messaging imports eventlet, whose green socket module loads dnspython for green DNS lookups:
# 0.2 s of CPU at every start of every sbusr program, for lookups sbusr never makes (it never
# monkey-patches). An operator's own value wins; the programs' children inherit the default.
os.environ.setdefault("EVENTLET_NO_GREENDNS", "yes")
