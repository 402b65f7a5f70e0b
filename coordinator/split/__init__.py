"""Split federated learning (MergeSFL): the server's side of devices that train only the bottom
of the model. What each module does: ``merging`` (the label mix of a merged batch and how far it
is from the fleet's), ``batch_regulation`` (each worker's batch size from its measured speed,
chosen jointly with the merged batch's label mix), ``top`` (the top of the model above the cut,
trained in eager PyTorch on merged features), ``step`` (one lock-step step: validated
submissions, the merged top step, gradient slices), ``session`` (a running split job: plans,
deadlines, averaging of the bottom adapters), ``jobs`` (specs, preparation, the jobs this
process holds)."""
