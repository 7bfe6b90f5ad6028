package httpapi

import "context"

// This file is the one table of the actions the edge serves: for each, the
// names it has in each protocol, the policy action the domain checks for it
// (package kms authorises; the table names it so that the edge and the
// domain can be held to the same list, see TestActionTableMatchesPolicy),
// its body limit and its handlers.

// action is one action of the API.
type action struct {
	// api3Name and legacyName are the action's names in API 3.0 and in the
	// legacy API; "" when the protocol does not serve it.
	api3Name, legacyName string
	// tagName is the action's name in the Tag service (tagsvc.go), whose
	// rows serve it through api3; "" for the KMS actions.
	tagName string
	// policy is the policy action the domain checks ("kms:Encrypt",
	// "kms-admin:CreateCredential").
	policy string
	// maxBody caps the request body of the action; 0 means
	// Config.MaxBodyBytes, which also caps any other value (the body is
	// read before the action is known for the form shapes).
	maxBody int64
	// syncFree marks the actions that change no key or credential: on a
	// cluster, a TC3 signature accepted with one of them is checked
	// against the node's memory only (the signatures the node accepted,
	// and those the other nodes published up to about two
	// Config.SignatureSync ago), with no store round trip. Every other
	// action also claims its signature in the shared ledger, after
	// waiting two publication intervals, before it runs (bind.go).
	syncFree bool
	// metadataRead marks the actions that change nothing and answer only
	// key or service metadata (no ciphertext, plaintext, signature or
	// random bytes): a TC3 signature bound to another action is accepted
	// with one of them (bind.go), since the official SDKs sign no action
	// and tools send a read right after a write with the same body
	// (DisableKey then DescribeKey), which carries the same signature
	// within one second. The binding still refuses the other way round.
	metadataRead bool
	// api3 serves the API 3.0 action (api3.go, keys.go, credentials.go).
	api3 api3Handler
	// legacy serves the legacy action (legacy.go, legacy_keys.go);
	// legacyParams are the business parameters it accepts.
	legacy       legacyHandler
	legacyParams []string
	// awsName is the action's name in the AWS KMS API (X-Amz-Target:
	// TrentService.<awsName>), "" when it does not serve it; aws serves it
	// (awskeys.go), with the same shape as an API 3.0 handler.
	awsName string
	aws     api3Handler
}

// legacyHandler serves one legacy action; ok is the success envelope its
// reply embeds.
type legacyHandler func(s *Server, ctx context.Context, p params, ok legacyReply) (any, error)

// actionTable finds an action by its name in each protocol.
type actionTable struct {
	all               []*action
	api3, legacy, aws map[string]*action
	tag               map[string]*action // the Tag service's (tagsvc.go)
}

// newActionTable returns the table of every action served.
func newActionTable() actionTable {
	all := []*action{
		{api3Name: "CreateKey", legacyName: "CreateKey", policy: "kms:CreateKey",
			api3: typedAPI3Action((*Server).createKey), legacy: (*Server).legacyCreateKey, legacyParams: []string{"description", "alias", "keyUsage", "type"},
			awsName: "CreateKey", aws: typedAPI3Action((*Server).awsCreateKey)},
		{api3Name: "Encrypt", legacyName: "Encrypt", policy: "kms:Encrypt", syncFree: true,
			api3: typedAPI3Action((*Server).encrypt), legacy: (*Server).legacyEncrypt, legacyParams: []string{"keyId", "plaintext", "encryptionContext"},
			awsName: "Encrypt", aws: typedAPI3Action((*Server).awsEncrypt)},
		{api3Name: "Decrypt", legacyName: "Decrypt", policy: "kms:Decrypt", syncFree: true,
			api3: typedAPI3Action((*Server).decrypt), legacy: (*Server).legacyDecrypt, legacyParams: []string{"ciphertextBlob", "encryptionContext"},
			awsName: "Decrypt", aws: typedAPI3Action((*Server).awsDecrypt)},
		{api3Name: "GenerateDataKey", legacyName: "GenerateDataKey", policy: "kms:GenerateDataKey", syncFree: true,
			api3: typedAPI3Action((*Server).generateDataKey), legacy: (*Server).legacyGenerateDataKey, legacyParams: []string{"keyId", "keySpec", "numberOfBytes", "encryptionContext"},
			awsName: "GenerateDataKey", aws: typedAPI3Action((*Server).awsGenerateDataKey)},
		{api3Name: "ReEncrypt", policy: "kms:ReEncrypt", syncFree: true, api3: typedAPI3Action((*Server).reEncrypt),
			awsName: "ReEncrypt", aws: typedAPI3Action((*Server).awsReEncrypt)},
		{api3Name: "GenerateRandom", policy: "kms:GenerateRandom", syncFree: true, api3: typedAPI3Action((*Server).generateRandom),
			awsName: "GenerateRandom", aws: typedAPI3Action((*Server).awsGenerateRandom)},

		{api3Name: "DescribeKey", legacyName: "GetKeyAttributes", policy: "kms:DescribeKey", syncFree: true, metadataRead: true,
			api3: typedAPI3Action((*Server).describeKey), legacy: (*Server).legacyGetKeyAttributes, legacyParams: []string{"keyId"},
			awsName: "DescribeKey", aws: typedAPI3Action((*Server).awsDescribeKey)},
		{api3Name: "DescribeKeys", policy: "kms:DescribeKeys", syncFree: true, metadataRead: true, api3: typedAPI3Action((*Server).describeKeys)},
		{api3Name: "ListKeys", legacyName: "ListKey", policy: "kms:ListKeys", syncFree: true, metadataRead: true,
			api3: typedAPI3Action((*Server).listKeys), legacy: (*Server).legacyListKey, legacyParams: []string{"offset", "limit"},
			awsName: "ListKeys", aws: typedAPI3Action((*Server).awsListKeys)},
		{api3Name: "ListKeyDetail", policy: "kms:ListKeyDetail", syncFree: true, metadataRead: true, api3: typedAPI3Action((*Server).listKeyDetail)},
		{api3Name: "GetKeyRotationStatus", policy: "kms:GetKeyRotationStatus", syncFree: true, metadataRead: true, api3: typedAPI3Action((*Server).getKeyRotationStatus),
			awsName: "GetKeyRotationStatus", aws: typedAPI3Action((*Server).awsGetKeyRotationStatus)},
		// hsmkms's own: versions and their usage counts.
		{api3Name: "ListKeyVersions", policy: "kms:DescribeKey", syncFree: true, metadataRead: true, api3: typedAPI3Action((*Server).listKeyVersions)},

		{api3Name: "UpdateAlias", legacyName: "SetKeyAttributes", policy: "kms:UpdateAlias",
			api3: typedAPI3Action((*Server).updateAlias), legacy: (*Server).legacySetKeyAttributes, legacyParams: []string{"keyId", "alias"},
			awsName: "UpdateAlias", aws: typedAPI3Action((*Server).awsUpdateAlias)},
		{api3Name: "UpdateKeyDescription", policy: "kms:UpdateKeyDescription", api3: typedAPI3Action((*Server).updateKeyDescription)},
		{api3Name: "EnableKey", legacyName: "EnableKey", policy: "kms:EnableKey",
			api3: typedAPI3Action((*Server).enableKey), legacy: (*Server).legacyEnableKey, legacyParams: []string{"keyId"},
			awsName: "EnableKey", aws: typedAPI3Action((*Server).awsEnableKey)},
		{api3Name: "DisableKey", legacyName: "DisableKey", policy: "kms:DisableKey",
			api3: typedAPI3Action((*Server).disableKey), legacy: (*Server).legacyDisableKey, legacyParams: []string{"keyId"},
			awsName: "DisableKey", aws: typedAPI3Action((*Server).awsDisableKey)},
		{api3Name: "EnableKeys", policy: "kms:EnableKeys", api3: typedAPI3Action((*Server).enableKeys)},
		{api3Name: "DisableKeys", policy: "kms:DisableKeys", api3: typedAPI3Action((*Server).disableKeys)},
		{api3Name: "ScheduleKeyDeletion", legacyName: "ScheduleKeyDeletion", policy: "kms:ScheduleKeyDeletion",
			api3: typedAPI3Action((*Server).scheduleKeyDeletion), legacy: (*Server).legacyScheduleKeyDeletion, legacyParams: []string{"keyId", "pendingWindowInDays"},
			awsName: "ScheduleKeyDeletion", aws: typedAPI3Action((*Server).awsScheduleKeyDeletion)},
		{api3Name: "CancelKeyDeletion", legacyName: "CancelKeyDeletion", policy: "kms:CancelKeyDeletion",
			api3: typedAPI3Action((*Server).cancelKeyDeletion), legacy: (*Server).legacyCancelKeyDeletion, legacyParams: []string{"keyId"},
			awsName: "CancelKeyDeletion", aws: typedAPI3Action((*Server).awsCancelKeyDeletion)},
		{api3Name: "ArchiveKey", policy: "kms:ArchiveKey", api3: typedAPI3Action((*Server).archiveKey)},
		{api3Name: "CancelKeyArchive", policy: "kms:CancelKeyArchive", api3: typedAPI3Action((*Server).cancelKeyArchive)},
		{api3Name: "RotateKey", policy: "kms:RotateKey", api3: typedAPI3Action((*Server).rotateKey),
			awsName: "RotateKeyOnDemand", aws: typedAPI3Action((*Server).awsRotateKeyOnDemand)},
		{api3Name: "EnableKeyRotation", policy: "kms:EnableKeyRotation", api3: typedAPI3Action((*Server).enableKeyRotation),
			awsName: "EnableKeyRotation", aws: typedAPI3Action((*Server).awsEnableKeyRotation)},
		{api3Name: "DisableKeyRotation", policy: "kms:DisableKeyRotation", api3: typedAPI3Action((*Server).disableKeyRotation),
			awsName: "DisableKeyRotation", aws: typedAPI3Action((*Server).awsDisableKeyRotation)},

		// The AWS KMS API's own actions (awskeys.go).
		{awsName: "GenerateDataKeyWithoutPlaintext", policy: "kms:GenerateDataKeyWithoutPlaintext", syncFree: true, aws: typedAPI3Action((*Server).awsGenerateDataKeyWithoutPlaintext)},
		{awsName: "CreateAlias", policy: "kms:CreateAlias", aws: typedAPI3Action((*Server).awsCreateAlias)},
		{awsName: "DeleteAlias", policy: "kms:DeleteAlias", aws: typedAPI3Action((*Server).awsDeleteAlias)},
		{awsName: "ListAliases", policy: "kms:ListAliases", syncFree: true, aws: typedAPI3Action((*Server).awsListAliases)},
		// Tags through the AWS API (awstags.go), under the Tag service's words.
		{awsName: "TagResource", policy: "tag:TagResources", aws: typedAPI3Action((*Server).awsTagResource)},
		{awsName: "UntagResource", policy: "tag:UnTagResources", aws: typedAPI3Action((*Server).awsUntagResource)},
		{awsName: "ListResourceTags", policy: "tag:DescribeResourceTagsByResourceIds", syncFree: true, aws: typedAPI3Action((*Server).awsListResourceTags)},
		{api3Name: "RotateKey", policy: "kms:RotateKey", api3: typedAPI3Action((*Server).rotateKey)},
		{api3Name: "EnableKeyRotation", policy: "kms:EnableKeyRotation", api3: typedAPI3Action((*Server).enableKeyRotation)},
		{api3Name: "DisableKeyRotation", policy: "kms:DisableKeyRotation", api3: typedAPI3Action((*Server).disableKeyRotation)},
		// Imported key material (import.go).
		{api3Name: "GetParametersForImport", policy: "kms:GetParametersForImport", api3: typedAPI3Action((*Server).getParametersForImport)},
		{api3Name: "ImportKeyMaterial", policy: "kms:ImportKeyMaterial", api3: typedAPI3Action((*Server).importKeyMaterial)},
		{api3Name: "DeleteImportedKeyMaterial", policy: "kms:DeleteImportedKeyMaterial", api3: typedAPI3Action((*Server).deleteImportedKeyMaterial)},

		{api3Name: "CreateCredential", policy: "kms-admin:CreateCredential", api3: typedAPI3Action((*Server).createCredential)},
		{api3Name: "ListCredentials", policy: "kms-admin:ListCredentials", api3: typedAPI3Action((*Server).listCredentials)},
		{api3Name: "EnableCredential", policy: "kms-admin:EnableCredential", api3: typedAPI3Action((*Server).enableCredential)},
		{api3Name: "DisableCredential", policy: "kms-admin:DisableCredential", api3: typedAPI3Action((*Server).disableCredential)},
		{api3Name: "UpdateCredentialPolicy", policy: "kms-admin:UpdateCredentialPolicy", api3: typedAPI3Action((*Server).updateCredentialPolicy)},
		{api3Name: "DeleteCredential", policy: "kms-admin:DeleteCredential", api3: typedAPI3Action((*Server).deleteCredential)},

		// Asymmetric keys (asym.go).
		{api3Name: "GetPublicKey", policy: "kms:GetPublicKey", syncFree: true, metadataRead: true, api3: typedAPI3Action((*Server).getPublicKey),
			awsName: "GetPublicKey", aws: typedAPI3Action((*Server).awsGetPublicKey)},
		{api3Name: "SignByAsymmetricKey", policy: "kms:SignByAsymmetricKey", syncFree: true, api3: typedAPI3Action((*Server).signByAsymmetricKey),
			awsName: "Sign", aws: typedAPI3Action((*Server).awsSign)},
		{api3Name: "VerifyByAsymmetricKey", policy: "kms:VerifyByAsymmetricKey", syncFree: true, api3: typedAPI3Action((*Server).verifyByAsymmetricKey),
			awsName: "Verify", aws: typedAPI3Action((*Server).awsVerify)},
		{api3Name: "AsymmetricRsaDecrypt", policy: "kms:AsymmetricRsaDecrypt", syncFree: true, api3: typedAPI3Action((*Server).asymmetricRsaDecrypt)},
		{api3Name: "ListAlgorithms", policy: "kms:ListAlgorithms", syncFree: true, metadataRead: true, api3: typedAPI3Action((*Server).listAlgorithms)},
		// Service probes (status.go).
		{api3Name: "GetServiceStatus", policy: "kms:GetServiceStatus", syncFree: true, metadataRead: true, api3: typedAPI3Action((*Server).getServiceStatus)},
		{api3Name: "GetRegions", policy: "kms:GetRegions", syncFree: true, metadataRead: true, api3: typedAPI3Action((*Server).getRegions)},
	}
	all = append(all, tagActionRows()...)
	t := actionTable{all: all, api3: map[string]*action{}, legacy: map[string]*action{}, aws: map[string]*action{}, tag: map[string]*action{}}
	for _, a := range all {
		if a.tagName != "" {
			t.tag[a.tagName] = a
			continue
		}
		if a.api3Name != "" {
			t.api3[a.api3Name] = a
		}
		if a.legacyName != "" {
			t.legacy[a.legacyName] = a
		}
		if a.awsName != "" {
			t.aws[a.awsName] = a
		}
	}
	return t
}

// bodyLimit is the largest request body a accepts under cfgMax.
func (a *action) bodyLimit(cfgMax int64) int64 {
	if a.maxBody > 0 && a.maxBody < cfgMax {
		return a.maxBody
	}
	return cfgMax
}
