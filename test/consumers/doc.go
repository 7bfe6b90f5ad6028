// Package consumers runs real AWS KMS clients against kmsd.
package consumers
