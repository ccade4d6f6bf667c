package lb

import (
	"bytes"
	"os"
	"reflect"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"
)

// decodeAll decodes a YAML stream strictly (unknown fields fail, as in the manifests source) into
// the registered MetalLB types.
func decodeAll(t *testing.T, file string) []runtime.Object {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	s := runtime.NewScheme()
	if err := AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	var out []runtime.Object
	for _, doc := range bytes.Split(data, []byte("\n---")) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			t.Fatal(err)
		}
		if tm.Kind == "" {
			continue
		}
		gv, err := schema.ParseGroupVersion(tm.APIVersion)
		if err != nil {
			t.Fatal(err)
		}
		obj, err := s.New(gv.WithKind(tm.Kind))
		if err != nil {
			t.Fatalf("%s %s: %v", tm.APIVersion, tm.Kind, err)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			t.Fatalf("%s: %v", tm.Kind, err)
		}
		out = append(out, obj)
	}
	return out
}

func TestSeedDecodes(t *testing.T) {
	objs := decodeAll(t, "../examples/metallb.yaml")
	if len(objs) != 2 {
		t.Fatalf("decoded %d objects, want 2", len(objs))
	}
	pool, ok := objs[0].(*IPAddressPool)
	if !ok {
		t.Fatalf("first object is %T", objs[0])
	}
	if pool.Name != "localip-pool" || pool.Namespace != "metallb-system" ||
		!reflect.DeepEqual(pool.Spec.Addresses, []string{"10.0.0.51-10.0.0.80"}) ||
		pool.Spec.AutoAssign == nil || !*pool.Spec.AutoAssign || !pool.Spec.AvoidBuggyIPs {
		t.Errorf("pool decoded as %+v", pool)
	}
	if errs := ValidateIPAddressPool(pool); errs != nil {
		t.Errorf("seed pool invalid: %v", errs)
	}
	ad, ok := objs[1].(*L2Advertisement)
	if !ok {
		t.Fatalf("second object is %T", objs[1])
	}
	if !reflect.DeepEqual(ad.Spec.IPAddressPools, []string{"localip-pool"}) ||
		!reflect.DeepEqual(ad.Spec.Interfaces, []string{"ens33"}) {
		t.Errorf("L2Advertisement decoded as %+v", ad.Spec)
	}
	if errs := ValidateL2Advertisement(ad); errs != nil {
		t.Errorf("seed advertisement invalid: %v", errs)
	}
}

func TestAllKindsDecodeValidateAndDeepCopy(t *testing.T) {
	objs := decodeAll(t, "testdata/all-kinds.yaml")
	if len(objs) != 6 {
		t.Fatalf("decoded %d objects, want 6", len(objs))
	}
	for _, obj := range objs {
		var errs []string
		switch o := obj.(type) {
		case *IPAddressPool:
			errs = ValidateIPAddressPool(o)
			if o.Spec.AllocateTo == nil || o.Spec.AllocateTo.Priority != 50 || len(o.Spec.AllocateTo.ServiceSelectors) != 1 {
				t.Errorf("serviceAllocation decoded as %+v", o.Spec.AllocateTo)
			}
		case *L2Advertisement:
			errs = ValidateL2Advertisement(o)
		case *BGPAdvertisement:
			errs = ValidateBGPAdvertisement(o)
			if o.Spec.LocalPref != 100 || *o.Spec.AggregationLength != 32 || len(o.Spec.Peers) != 1 {
				t.Errorf("BGPAdvertisement decoded as %+v", o.Spec)
			}
		case *Community:
			errs = ValidateCommunity(o)
		case *BGPPeer:
			errs = ValidateBGPPeer(o)
			if o.Spec.HoldTime.Duration != 9*time.Second || o.Spec.PasswordSecret.Name != "bgp-secret" || o.Spec.VRFName != "red" {
				t.Errorf("BGPPeer decoded as %+v", o.Spec)
			}
			if o.APIVersion != "metallb.io/v1beta2" {
				t.Errorf("BGPPeer apiVersion %q", o.APIVersion)
			}
		case *BFDProfile:
			errs = ValidateBFDProfile(o)
			if *o.Spec.ReceiveInterval != 300 || *o.Spec.DetectMultiplier != 3 || *o.Spec.MinimumTTL != 254 {
				t.Errorf("BFDProfile decoded as %+v", o.Spec)
			}
		default:
			t.Fatalf("unexpected %T", obj)
		}
		if errs != nil {
			t.Errorf("%T invalid: %v", obj, errs)
		}
		// A deep copy is equal and shares no memory: mutating every slice of the copy through
		// a JSON round trip of a modified copy must leave the original unchanged.
		cp := obj.DeepCopyObject()
		if !reflect.DeepEqual(cp, obj) {
			t.Errorf("%T: deep copy differs", obj)
		}
		before, _ := yaml.Marshal(obj)
		mutate(reflect.ValueOf(cp))
		after, _ := yaml.Marshal(obj)
		if !bytes.Equal(before, after) {
			t.Errorf("%T: mutating the copy changed the original:\n%s\n%s", obj, before, after)
		}
	}
}

// mutate changes every string, number and slice element reachable from v in place.
func mutate(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			mutate(v.Elem())
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				mutate(v.Field(i))
			}
		}
	case reflect.Slice:
		for i := 0; i < v.Len(); i++ {
			mutate(v.Index(i))
		}
	case reflect.Map:
		if v.Len() > 0 && v.Type().Key().Kind() == reflect.String && v.Type().Elem().Kind() == reflect.String {
			v.SetMapIndex(reflect.ValueOf("mutated"), reflect.ValueOf("yes"))
		}
	case reflect.String:
		if v.CanSet() {
			v.SetString(v.String() + "x")
		}
	case reflect.Bool:
		if v.CanSet() {
			v.SetBool(!v.Bool())
		}
	case reflect.Int, reflect.Int32, reflect.Int64:
		if v.CanSet() {
			v.SetInt(v.Int() + 1)
		}
	case reflect.Uint16, reflect.Uint32:
		if v.CanSet() {
			v.SetUint(v.Uint() + 1)
		}
	}
}

func TestListsAndSchemeRegistration(t *testing.T) {
	s := runtime.NewScheme()
	if err := AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"IPAddressPool", "IPAddressPoolList", "L2Advertisement", "L2AdvertisementList",
		"BGPAdvertisement", "BGPAdvertisementList", "Community", "CommunityList"} {
		if !s.Recognizes(GroupVersion.WithKind(k)) {
			t.Errorf("%s not registered in %s", k, GroupVersion)
		}
	}
	if !s.Recognizes(GroupVersionV1beta2.WithKind("BGPPeer")) || !s.Recognizes(GroupVersionV1beta2.WithKind("BGPPeerList")) {
		t.Errorf("BGPPeer not registered in %s", GroupVersionV1beta2)
	}
	l := &IPAddressPoolList{Items: []IPAddressPool{{Spec: IPAddressPoolSpec{Addresses: []string{"10.0.0.0/24"}}}}}
	cp := l.DeepCopyObject().(*IPAddressPoolList)
	cp.Items[0].Spec.Addresses[0] = "changed"
	if l.Items[0].Spec.Addresses[0] != "10.0.0.0/24" {
		t.Error("list deep copy shares items")
	}
	for _, o := range []runtime.Object{&L2AdvertisementList{Items: []L2Advertisement{{}}}, &BGPAdvertisementList{Items: []BGPAdvertisement{{}}},
		&CommunityList{Items: []Community{{}}}, &BGPPeerList{Items: []BGPPeer{{}}}} {
		if !reflect.DeepEqual(o.DeepCopyObject(), o) {
			t.Errorf("%T deep copy differs", o)
		}
	}
}

func TestValidation(t *testing.T) {
	i32 := func(v int32) *int32 { return &v }
	dur := func(d time.Duration) *metav1.Duration { return &metav1.Duration{Duration: d} }
	tests := []struct {
		name string
		obj  runtime.Object
		want int // number of reasons
	}{
		{"pool ok", &IPAddressPool{Spec: IPAddressPoolSpec{Addresses: []string{"10.0.0.0/24", "fd00::1-fd00::9"}}}, 0},
		{"pool empty", &IPAddressPool{}, 1},
		{"pool bad range", &IPAddressPool{Spec: IPAddressPoolSpec{Addresses: []string{"10.0.0.9-10.0.0.1", "10.0.1.1", "x/24", "10.0.0.1-fd00::1"}}}, 4},
		{"pool self overlap", &IPAddressPool{Spec: IPAddressPoolSpec{Addresses: []string{"10.0.0.0/24", "10.0.0.5-10.0.0.6"}}}, 1},
		{"pool bad allocation", &IPAddressPool{Spec: IPAddressPoolSpec{Addresses: []string{"10.0.0.0/24"}, AllocateTo: &ServiceAllocation{
			Priority: -1, Namespaces: []string{""},
			ServiceSelectors: []metav1.LabelSelector{{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: "Bogus"}}}}}}}, 3},
		{"l2 ok", &L2Advertisement{Spec: L2AdvertisementSpec{Interfaces: []string{"ens33"}}}, 0},
		{"l2 bad", &L2Advertisement{Spec: L2AdvertisementSpec{Interfaces: []string{"", "a-very-long-interface-name"}, IPAddressPools: []string{""}}}, 3},
		{"bgpadv bad", &BGPAdvertisement{Spec: BGPAdvertisementSpec{AggregationLength: i32(33), AggregationLengthV6: i32(-1),
			Communities: []string{"1:2:3", "70000:1", "large:1:2:3", "alias"}}}, 4},
		{"community bad", &Community{Spec: CommunitySpec{Communities: []CommunityAlias{{Name: "a", Value: "1:1"}, {Name: "a", Value: "x"}, {Value: "1:1"}}}}, 3},
		{"peer ok", &BGPPeer{Spec: BGPPeerSpec{MyASN: 1, DynamicASN: ExternalASNMode, Interface: "eth0"}}, 0},
		{"peer bad", &BGPPeer{Spec: BGPPeerSpec{ASN: 2, DynamicASN: "weird", Address: "x", Interface: "e", SrcAddress: "y",
			RouterID: "fd00::1", HoldTime: dur(2 * time.Second), KeepaliveTime: dur(5 * time.Second), ConnectTime: dur(0)}}, 10},
		{"peer missing", &BGPPeer{Spec: BGPPeerSpec{MyASN: 1}}, 2},
	}
	for _, tc := range tests {
		var errs []string
		switch o := tc.obj.(type) {
		case *IPAddressPool:
			errs = ValidateIPAddressPool(o)
		case *L2Advertisement:
			errs = ValidateL2Advertisement(o)
		case *BGPAdvertisement:
			errs = ValidateBGPAdvertisement(o)
		case *Community:
			errs = ValidateCommunity(o)
		case *BGPPeer:
			errs = ValidateBGPPeer(o)
		}
		if len(errs) != tc.want {
			t.Errorf("%s: %d reasons %q, want %d", tc.name, len(errs), errs, tc.want)
		}
	}
}

func TestParseRange(t *testing.T) {
	tests := []struct {
		in, want string // want "" means an error
	}{
		{"10.0.0.51-10.0.0.80", "10.0.0.51-10.0.0.80"},
		{" 10.0.0.51 - 10.0.0.80 ", "10.0.0.51-10.0.0.80"},
		{"10.0.0.0/24", "10.0.0.0-10.0.0.255"},
		{"10.0.0.7/24", "10.0.0.0-10.0.0.255"},
		{"10.0.0.7/32", "10.0.0.7"},
		{"0.0.0.0/0", "0.0.0.0-255.255.255.255"},
		{"fd00:10::51-fd00:10::80", "fd00:10::51-fd00:10::80"},
		{"fd00:10::/64", "fd00:10::-fd00:10::ffff:ffff:ffff:ffff"},
		{"fd00:10::/127", "fd00:10::-fd00:10::1"},
		{"10.0.0.1", ""},
		{"fd00::1", ""},
		{"10.0.0.2-10.0.0.1", ""},
		{"10.0.0.1-fd00::1", ""},
		{"::ffff:10.0.0.0/120", ""},
		{"fe80::1%eth0-fe80::2", ""},
		{"10.0.0.0/33", ""},
	}
	for _, tc := range tests {
		r, err := ParseRange(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("ParseRange(%q) = %s, want an error", tc.in, r)
			}
			continue
		}
		if err != nil || r.String() != tc.want {
			t.Errorf("ParseRange(%q) = %s, %v; want %s", tc.in, r, err, tc.want)
		}
	}
}
