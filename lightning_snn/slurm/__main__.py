import sys

from lightning_snn.slurm.submit import main

if __name__ == "__main__":
    sys.exit(main())
