package main

import "hsmkms/kms"

// kmsConfigHook, when set, adjusts the domain configuration before the
// service starts. Only test builds set it (build tag kmsd_faults, see
// faults.go); a production kmsd has no such knob.
var kmsConfigHook func(*kms.Config)
