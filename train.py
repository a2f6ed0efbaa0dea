"""`python train.py [flags]` is exactly `python main.py [flags]`: the course
autograder runs train.py. The worker loop is in worker.py, the parent's in
trainer.py."""

import main
from mnist_hogwild.core.processes import exit_now

if __name__ == "__main__":
    exit_now(main.main())
