import sys

from mbmpo_ray.cli import main

sys.exit(main())
