"""unl: PNU-Repro's own table comparing noisy-label methods of several papers (CE, ELR, Confident Learning,
CPC, DivideMix's loss GMM, RCAL's calibration) on one data set, backbone, schedule and seed set. Every row
names a method registered by its own paper (common.registry, the papers listed in `methods_from`); this
package imports none of them and holds the README."""
