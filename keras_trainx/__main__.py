import sys

from keras_trainx.cli import main

sys.exit(main())
