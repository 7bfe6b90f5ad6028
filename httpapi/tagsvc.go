package httpapi

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"

	"hsmkms/kms"
)

// The Tag service subset (Tencent Cloud's tag.tencentcloudapi.com, API
// version 2018-08-13) that tools use on KMS keys: the Terraform provider's
// tencentcloud_kms_key (ModifyResourceTags, DescribeResourceTagsByResourceIds)
// and `tccli tag` (TagResources, UnTagResources, GetResources). It is
// served on the API 3.0 listener: a TC3 request whose credential scope
// names the service "tag" is a Tag request, and must carry X-TC-Version
// 2018-08-13; so is a signature-v1 request (HmacSHA1/HmacSHA256, which
// sign every parameter, Action and Version included) whose Version is
// 2018-08-13. Either is authenticated, bound, admitted, audited and
// metered like any other API 3.0 request. Only KMS keys are resources here.
//
// Resource names are Tencent's six segments:
//
//	qcs::kms:<region>:uin/<uin>:key/<keyId>
//	qcs::kms:<region>:uin/<uin>:key/creatorUin/<uin>/<keyId>   (KeyMetadata.ResourceId)
//
// <region> must be the configured region (kms.Config.Region), or empty.
// On-prem there is one account: kmsd reports uin 0 (CreatorUin,
// ResourceId creatorUin/0/<keyId>) and accepts any <uin>, or none, in the
// names it is given (the provider sends "uin/:").

// TagAPIVersion is the Tag API version served.
const TagAPIVersion = "2018-08-13"

// TagService is the TC3 credential scope's service of Tag requests.
const TagService = "tag"

// TagAdmin is the part of the domain the Tag service and the status
// actions call. *kms.Service implements it.
type TagAdmin interface {
	ModifyTags(ctx context.Context, action, keyID string, set []kms.Tag, remove []string) error
	KeyTags(ctx context.Context, keyID string) ([]kms.Tag, error)
	TaggedKeys(ctx context.Context, filters []kms.TagFilter) []kms.TaggedKey
	ServiceStatus(ctx context.Context) (kms.ServiceStatus, error)
	Regions(ctx context.Context) ([]string, error)
	Region() string
}

// tagActionRows are the Tag service's actions, for the action table.
func tagActionRows() []*action {
	return []*action{
		{tagName: "TagResources", policy: kms.ActTagResources, api3: typedAPI3Action((*Server).tagResources)},
		{tagName: "UnTagResources", policy: kms.ActUnTagResources, api3: typedAPI3Action((*Server).unTagResources)},
		{tagName: "ModifyResourceTags", policy: kms.ActModifyResourceTags, api3: typedAPI3Action((*Server).modifyResourceTags)},
		{tagName: "DescribeResourceTagsByResourceIds", policy: kms.ActDescribeTags, syncFree: true, metadataRead: true,
			api3: typedAPI3Action((*Server).describeResourceTagsByResourceIds)},
		{tagName: "GetResources", policy: kms.ActGetResources, syncFree: true, metadataRead: true, api3: typedAPI3Action((*Server).getResources)},
	}
}

// serveTag serves an authenticated Tag request (serveAPI3 hands it over).
func (s *Server) serveTag(ctx context.Context, info *reqInfo, req *api3Request) error {
	if req.version != TagAPIVersion {
		return apiErrorf("NoSuchVersion", "the version "+truncate(req.version, 32)+" of the tag service is not supported; use "+TagAPIVersion)
	}
	info.action = req.action
	act, ok := s.actions.tag[req.action]
	info.known = ok
	if !ok {
		return apiErrorf("InvalidAction", "the tag action "+truncate(req.action, 64)+" is not supported")
	}
	return s.serveAPI3Action(ctx, info, req, act)
}

// scopeService returns the service of a TC3 Authorization header's
// credential scope ("" if there is none): ID/DATE/SERVICE/tc3_request.
// The header was parsed and verified before. It does not allocate (it
// runs on every TC3 request).
func scopeService(authz string) string {
	_, rest, ok := strings.Cut(authz, "Credential=")
	if !ok {
		return ""
	}
	cred, _, _ := strings.Cut(rest, ",")
	_, rest, ok1 := strings.Cut(cred, "/")    // after ID
	_, rest, ok2 := strings.Cut(rest, "/")    // after DATE
	service, _, ok3 := strings.Cut(rest, "/") // SERVICE
	if !ok1 || !ok2 || !ok3 {
		return ""
	}
	return service
}

// resourceName is a parsed six-segment resource name.
type resourceName struct {
	raw   string
	keyID string
}

// parseResource reads a KMS key's six-segment name.
func (s *Server) parseResource(name string) (resourceName, error) {
	bad := func(why string) (resourceName, error) {
		return resourceName{}, apiErrorf("InvalidParameterValue.ResourceDescriptionError",
			"the resource "+strconv.Quote(truncate(name, 200))+" "+why+"; want qcs::kms:"+s.kms.Region()+":uin/<uin>:key/<keyId>")
	}
	parts := strings.Split(name, ":")
	if len(parts) != 6 || parts[0] != "qcs" {
		return bad("is not a six-segment resource name")
	}
	if parts[2] != "kms" {
		return bad("is not a KMS resource (only KMS keys are served here)")
	}
	if parts[3] != "" && parts[3] != s.kms.Region() {
		return bad("names another region than this service's")
	}
	if parts[4] != "" && !strings.HasPrefix(parts[4], "uin/") {
		return bad("has no uin/<uin> account")
	}
	id, ok := strings.CutPrefix(parts[5], "key/")
	if !ok {
		return bad("is not a key")
	}
	id = resourceKeyID(id)
	if id == "" {
		return bad("names no key id")
	}
	return resourceName{raw: name, keyID: id}, nil
}

// resourceKeyID is the key id in a ResourceId: the id itself or
// creatorUin/<uin>/<keyId>.
func resourceKeyID(id string) string {
	if rest, ok := strings.CutPrefix(id, "creatorUin/"); ok {
		_, k, ok := strings.Cut(rest, "/")
		if !ok {
			return ""
		}
		return k
	}
	return id
}

// resourceNameOf is the name kmsd gives a key.
func (s *Server) resourceNameOf(keyID string) string {
	return "qcs::kms:" + s.kms.Region() + ":uin/0:key/creatorUin/0/" + keyID
}

type tagPair struct {
	TagKey   *string `json:"TagKey"`
	TagValue *string `json:"TagValue"`
}

type tagOut struct {
	TagKey   string `json:"TagKey"`
	TagValue string `json:"TagValue"`
}

// toDomainTags reads wire tags: a key is required, a missing value is "".
func toDomainTags(in []resourceTag) ([]kms.Tag, error) {
	out := make([]kms.Tag, 0, len(in))
	for _, t := range in {
		if t.TagKey == nil || *t.TagKey == "" {
			return nil, apiErrorf("InvalidParameterValue.TagKeyEmpty", "a tag key is empty")
		}
		out = append(out, kms.Tag{Key: *t.TagKey, Value: deref(t.TagValue)})
	}
	return out, nil
}

func toDomainFilters(in []resourceTagFilter, max int) ([]kms.TagFilter, error) {
	if len(in) > max {
		return nil, apiErrorf("InvalidParameterValue", "at most "+strconv.Itoa(max)+" TagFilters are allowed")
	}
	out := make([]kms.TagFilter, 0, len(in))
	for _, f := range in {
		if f.TagKey == nil || *f.TagKey == "" {
			return nil, apiErrorf("InvalidParameterValue.TagKeyEmpty", "a TagFilters entry has no TagKey")
		}
		if len(f.TagValue) > 10 {
			return nil, apiErrorf("InvalidParameterValue", "a TagFilters entry has more than 10 TagValue")
		}
		out = append(out, kms.TagFilter{Key: *f.TagKey, Values: f.TagValue})
	}
	return out, nil
}

// failedResource is one resource TagResources or UnTagResources could not
// change.
type failedResource struct {
	Resource string `json:"Resource"`
	Code     string `json:"Code"`
	Message  string `json:"Message"`
}

type tagResourcesRequest struct {
	ResourceList []string      `json:"ResourceList"`
	Tags         []resourceTag `json:"Tags"`
}

type failedResourcesResponse struct {
	FailedResources []failedResource `json:"FailedResources"`
	responseBase
}

// eachResource parses every name (a malformed one refuses the request),
// then applies f to each key; a key f refuses is listed, with its error
// code, in FailedResources, as the tag service does.
func (s *Server) eachResource(ctx context.Context, names []string, f func(keyID string) error) (*failedResourcesResponse, error) {
	if len(names) == 0 {
		return nil, apiErrorf("MissingParameter", "the ResourceList parameter is missing")
	}
	if len(names) > 10 {
		return nil, apiErrorf("InvalidParameterValue", "at most 10 resources are allowed")
	}
	rs := make([]resourceName, len(names))
	for i, n := range names {
		r, err := s.parseResource(n)
		if err != nil {
			return nil, err
		}
		rs[i] = r
	}
	out := &failedResourcesResponse{FailedResources: []failedResource{}}
	for _, r := range rs {
		noteKey(ctx, r.keyID, 0)
		if err := f(r.keyID); err != nil {
			var te *kms.TagError
			if errors.As(err, &te) {
				return nil, err // the same tags for every resource: the request is at fault
			}
			w := s.toWireError(err, infoFrom(ctx).requestID)
			out.FailedResources = append(out.FailedResources, failedResource{Resource: r.raw, Code: w.code, Message: w.message})
		}
	}
	return out, nil
}

func (s *Server) tagResources(ctx context.Context, req *tagResourcesRequest) (*failedResourcesResponse, error) {
	if len(req.Tags) == 0 {
		return nil, apiErrorf("MissingParameter", "the Tags parameter is missing")
	}
	tags, err := toDomainTags(req.Tags)
	if err != nil {
		return nil, err
	}
	return s.eachResource(ctx, req.ResourceList, func(id string) error {
		return s.kms.ModifyTags(ctx, kms.ActTagResources, id, tags, nil)
	})
}

type unTagResourcesRequest struct {
	ResourceList []string `json:"ResourceList"`
	TagKeys      []string `json:"TagKeys"`
}

func (s *Server) unTagResources(ctx context.Context, req *unTagResourcesRequest) (*failedResourcesResponse, error) {
	if len(req.TagKeys) == 0 {
		return nil, apiErrorf("MissingParameter", "the TagKeys parameter is missing")
	}
	return s.eachResource(ctx, req.ResourceList, func(id string) error {
		return s.kms.ModifyTags(ctx, kms.ActUnTagResources, id, nil, req.TagKeys)
	})
}

type modifyResourceTagsRequest struct {
	Resource    *string       `json:"Resource"`
	ReplaceTags []resourceTag `json:"ReplaceTags"`
	DeleteTags  []struct {
		TagKey *string `json:"TagKey"`
	} `json:"DeleteTags"`
}

func (s *Server) modifyResourceTags(ctx context.Context, req *modifyResourceTagsRequest) (*emptyResponse, error) {
	name, err := requireString("Resource", req.Resource)
	if err != nil {
		return nil, err
	}
	if len(req.ReplaceTags) == 0 && len(req.DeleteTags) == 0 {
		return nil, apiErrorf("MissingParameter", "one of ReplaceTags and DeleteTags is required")
	}
	r, err := s.parseResource(name)
	if err != nil {
		return nil, err
	}
	set, err := toDomainTags(req.ReplaceTags)
	if err != nil {
		return nil, err
	}
	remove := make([]string, 0, len(req.DeleteTags))
	for _, d := range req.DeleteTags {
		if d.TagKey == nil || *d.TagKey == "" {
			return nil, apiErrorf("InvalidParameterValue.TagKeyEmpty", "a DeleteTags entry has no TagKey")
		}
		remove = append(remove, *d.TagKey)
	}
	noteKey(ctx, r.keyID, 0)
	if err := s.kms.ModifyTags(ctx, kms.ActModifyResourceTags, r.keyID, set, remove); err != nil {
		return nil, err
	}
	return &emptyResponse{}, nil
}

type describeResourceTagsRequest struct {
	ServiceType    *string  `json:"ServiceType"`
	ResourcePrefix *string  `json:"ResourcePrefix"`
	ResourceIds    []string `json:"ResourceIds"`
	ResourceRegion *string  `json:"ResourceRegion"`
	Offset         *uint64  `json:"Offset"`
	Limit          *uint64  `json:"Limit"`
	Category       *string  `json:"Category"`
}

type tagResourceOut struct {
	TagKey      string `json:"TagKey"`
	TagValue    string `json:"TagValue"`
	ResourceID  string `json:"ResourceId"`
	TagKeyMd5   string `json:"TagKeyMd5"`
	TagValueMd5 string `json:"TagValueMd5"`
	ServiceType string `json:"ServiceType"`
	Category    string `json:"Category"`
}

type describeResourceTagsResponse struct {
	TotalCount uint64           `json:"TotalCount"`
	Offset     uint64           `json:"Offset"`
	Limit      uint64           `json:"Limit"`
	Tags       []tagResourceOut `json:"Tags"`
	responseBase
}

func md5Hex(s string) string {
	h := md5.Sum([]byte(s)) // an identifier the tag service reports, not a security use
	return hex.EncodeToString(h[:])
}

func (s *Server) describeResourceTagsByResourceIds(ctx context.Context, req *describeResourceTagsRequest) (*describeResourceTagsResponse, error) {
	if _, err := requireString("ServiceType", req.ServiceType); err != nil {
		return nil, err
	}
	if _, err := requireString("ResourcePrefix", req.ResourcePrefix); err != nil {
		return nil, err
	}
	switch {
	case len(req.ResourceIds) == 0:
		return nil, apiErrorf("MissingParameter", "the ResourceIds parameter is missing")
	case len(req.ResourceIds) > 50:
		return nil, apiErrorf("InvalidParameterValue", "at most 50 ResourceIds are allowed")
	case *req.ServiceType != "kms" || *req.ResourcePrefix != "key":
		return nil, apiErrorf("InvalidParameterValue", "only the ServiceType kms and the ResourcePrefix key are served here")
	case deref(req.ResourceRegion) != "" && *req.ResourceRegion != s.kms.Region():
		return nil, apiErrorf("InvalidParameterValue", "the ResourceRegion "+strconv.Quote(truncate(*req.ResourceRegion, 32))+" is not this service's region "+s.kms.Region())
	}
	switch c := deref(req.Category); c {
	case "", "All", "Custom":
	case "System":
		return &describeResourceTagsResponse{Tags: []tagResourceOut{}}, nil // kmsd sets no system tags
	default:
		return nil, apiErrorf("InvalidParameterValue", "the Category must be Custom, System or All")
	}
	limit := uint64(15)
	if req.Limit != nil {
		if *req.Limit < 1 || *req.Limit > 100 {
			return nil, apiErrorf("InvalidParameterValue", "the Limit must be 1 to 100")
		}
		limit = *req.Limit
	}
	offset := uint64(0)
	if req.Offset != nil {
		offset = *req.Offset
	}
	all := []tagResourceOut{}
	for _, rid := range req.ResourceIds {
		id := resourceKeyID(rid)
		noteKey(ctx, id, 0)
		tags, err := s.kms.KeyTags(ctx, id)
		if errors.Is(err, kms.ErrKeyNotFound) || errors.Is(err, kms.ErrInvalidKeyID) {
			continue // the tag service lists the tags of the resources it knows
		}
		if err != nil {
			return nil, err
		}
		for _, t := range tags {
			all = append(all, tagResourceOut{TagKey: t.Key, TagValue: t.Value, ResourceID: rid,
				TagKeyMd5: md5Hex(t.Key), TagValueMd5: md5Hex(t.Value), ServiceType: "kms", Category: "Custom"})
		}
	}
	out := &describeResourceTagsResponse{TotalCount: uint64(len(all)), Offset: offset, Limit: limit, Tags: []tagResourceOut{}}
	if offset < uint64(len(all)) {
		out.Tags = all[offset:min(uint64(len(all)), offset+limit)]
	}
	return out, nil
}

type getResourcesRequest struct {
	ResourceList    []string            `json:"ResourceList"`
	TagFilters      []resourceTagFilter `json:"TagFilters"`
	PaginationToken *string             `json:"PaginationToken"`
	MaxResults      *uint64             `json:"MaxResults"`
}

type resourceTagMapping struct {
	Resource string   `json:"Resource"`
	Tags     []tagOut `json:"Tags"`
}

type getResourcesResponse struct {
	PaginationToken        string               `json:"PaginationToken"`
	ResourceTagMappingList []resourceTagMapping `json:"ResourceTagMappingList"`
	responseBase
}

func mapping(name string, tags []kms.Tag) resourceTagMapping {
	m := resourceTagMapping{Resource: name, Tags: make([]tagOut, len(tags))}
	for i, t := range tags {
		m.Tags[i] = tagOut{TagKey: t.Key, TagValue: t.Value}
	}
	return m
}

// getResources lists tagged KMS keys: those named by ResourceList (all of
// them; resources of other services are never tagged here), or every key
// the caller may tag:GetResources that matches TagFilters, paged by
// PaginationToken (an offset) and MaxResults.
func (s *Server) getResources(ctx context.Context, req *getResourcesRequest) (*getResourcesResponse, error) {
	filters, err := toDomainFilters(req.TagFilters, 6)
	if err != nil {
		return nil, err
	}
	out := &getResourcesResponse{ResourceTagMappingList: []resourceTagMapping{}}
	if len(req.ResourceList) > 0 {
		if len(req.ResourceList) > 10 {
			return nil, apiErrorf("InvalidParameterValue", "at most 10 resources are allowed")
		}
		for _, n := range req.ResourceList {
			r, err := s.parseResource(n)
			if err != nil {
				return nil, err
			}
			tags, err := s.kms.KeyTags(ctx, r.keyID)
			if errors.Is(err, kms.ErrKeyNotFound) || errors.Is(err, kms.ErrInvalidKeyID) || errors.Is(err, kms.ErrUnauthorized) ||
				errors.Is(err, kms.ErrKeyDisabled) {
				continue // GetResources lists what the caller may see, and believes
			}
			if err != nil {
				return nil, err
			}
			if len(tags) > 0 && matchFilters(tags, filters) {
				out.ResourceTagMappingList = append(out.ResourceTagMappingList, mapping(r.raw, tags))
			}
		}
		return out, nil
	}
	max := uint64(50)
	if req.MaxResults != nil {
		if *req.MaxResults < 1 || *req.MaxResults > 200 {
			return nil, apiErrorf("InvalidParameterValue", "the MaxResults must be 1 to 200")
		}
		max = *req.MaxResults
	}
	offset := uint64(0)
	if tok := deref(req.PaginationToken); tok != "" {
		n, err := strconv.ParseUint(tok, 10, 32)
		if err != nil {
			return nil, apiErrorf("InvalidParameterValue", "the PaginationToken is not one this service gave")
		}
		offset = n
	}
	keys := s.kms.TaggedKeys(ctx, filters)
	if offset >= uint64(len(keys)) {
		return out, nil
	}
	end := min(uint64(len(keys)), offset+max)
	for _, k := range keys[offset:end] {
		out.ResourceTagMappingList = append(out.ResourceTagMappingList, mapping(s.resourceNameOf(k.KeyID), k.Tags))
	}
	if end < uint64(len(keys)) {
		out.PaginationToken = strconv.FormatUint(end, 10)
	}
	return out, nil
}

// matchFilters is the TagFilters rule of GetResources and ListKeyDetail:
// every filter's key present, with one of its values if it lists any.
func matchFilters(tags []kms.Tag, filters []kms.TagFilter) bool {
	for _, f := range filters {
		found := false
		for _, t := range tags {
			if t.Key != f.Key {
				continue
			}
			found = len(f.Values) == 0
			for _, v := range f.Values {
				found = found || v == t.Value
			}
		}
		if !found {
			return false
		}
	}
	return true
}
