import sys

from dataset_preprocess.cli import main

sys.exit(main())
