"""The worker side: the Downpour training loop of one worker, its data sets and evaluation."""
