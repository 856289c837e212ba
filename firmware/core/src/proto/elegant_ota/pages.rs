//! What ElegantOTA's routes answer with: the portal page (otahil's own markup and script, with
//! the original's behaviour: pick a mode and a file, the page hashes it, opens the update with
//! `/ota/start`, posts it to `/ota/upload` with a progress bar, then says how it went), the
//! metadata JSON and the short texts.

/// The portal. The file's MD5 is computed in the page (the original uses SparkMD5) and sent
/// as `hash`; the upload is one multipart part named `file`; a file larger than the metadata's
/// `fwa` is refused before anything is sent. The result is in `#status` (`Update successful`
/// or `Update failed: <the device's text>`), the progress in `#progress`.
pub const PAGE: &str = "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>\
<meta name='viewport' content='width=device-width,initial-scale=1'><title>ElegantOTA</title>\
<style>body{font-family:sans-serif;max-width:32em;margin:2em auto}progress{width:100%}</style></head><body>\
<h1>OTA Update</h1><p id='hw'></p>\
<p><label><input type='radio' name='mode' id='mode-fr' value='fr' checked> Firmware</label> \
<label><input type='radio' name='mode' id='mode-fs' value='fs'> Filesystem</label></p>\
<p><input type='file' id='file' accept='.bin,.bin.gz'></p>\
<progress id='bar' max='100' value='0'></progress><p id='progress'></p><p id='status'></p>\
<script>\
var meta={};\
function $(i){return document.getElementById(i)}\
function md5(b){var K=[],S=[7,12,17,22,5,9,14,20,4,11,16,23,6,10,15,21],i,n=b.length,w=((n+8>>6)+1)*16,M=new Int32Array(w);\
for(i=0;i<64;i++)K[i]=Math.floor(Math.abs(Math.sin(i+1))*4294967296)|0;\
for(i=0;i<n;i++)M[i>>2]|=b[i]<<(i%4*8);M[n>>2]|=128<<(n%4*8);M[w-2]=n*8;M[w-1]=Math.floor(n/536870912);\
var a0=1732584193,b0=-271733879,c0=-1732584194,d0=271733878;\
for(var j=0;j<w;j+=16){var A=a0,B=b0,C=c0,D=d0;for(i=0;i<64;i++){var F,g,r=i>>4;\
if(r==0){F=B&C|~B&D;g=i}else if(r==1){F=D&B|~D&C;g=(5*i+1)%16}else if(r==2){F=B^C^D;g=(3*i+5)%16}else{F=C^(B|~D);g=7*i%16}\
F=F+A+K[i]+M[j+g]|0;A=D;D=C;C=B;var s=S[r*4+i%4];B=B+(F<<s|F>>>32-s)|0}\
a0=a0+A|0;b0=b0+B|0;c0=c0+C|0;d0=d0+D|0}\
var h='';[a0,b0,c0,d0].forEach(function(v){for(var k=0;k<4;k++)h+=(v>>>k*8&255).toString(16).padStart(2,'0')});return h}\
function done(ok,text){$('status').textContent=ok?'Update successful: the device restarts':'Update failed: '+text}\
fetch('/ota/metadata').then(function(r){return r.json()}).then(function(m){meta=m;\
$('hw').textContent=m.hw+', room for '+m.fwa+' bytes of firmware'}).catch(function(){});\
$('file').onchange=function(){var f=this.files[0];if(!f)return;\
var mode=$('mode-fs').checked?'fs':'fr';$('status').textContent='';\
if(mode=='fr'&&meta.fwa&&f.size>meta.fwa)return done(false,'the file is larger than the firmware slot ('+meta.fwa+' bytes)');\
f.arrayBuffer().then(function(buf){var hash=md5(new Uint8Array(buf));\
return fetch('/ota/start?mode='+mode+'&hash='+hash).then(function(r){return r.text().then(function(t){\
if(!r.ok)return done(false,t);\
var x=new XMLHttpRequest(),d=new FormData();d.append('file',f,f.name);\
x.upload.onprogress=function(e){if(e.lengthComputable){var p=Math.round(e.loaded*100/e.total);$('bar').value=p;$('progress').textContent=p+'%'}};\
x.onload=function(){done(x.status==200,x.responseText)};x.onerror=function(){done(false,'the connection was lost')};\
x.open('POST','/ota/upload');x.send(d)})})})};\
</script></body></html>";

/// `/ota/start`'s answer to a `hash` that is not 32 hex digits (checked before anything opens).
pub const BAD_HASH: &str = "That MD5 digest is not valid";
/// `/ota/upload`'s answer when no start opened an update.
pub const NOT_STARTED: &str = "no update started: GET /ota/start first";
/// `/ota/start`'s answer while another path writes an update.
pub const BUSY: &str = "another update is running";

/// Sends a whole response: the head, then `pieces` as the body (not for HEAD).
pub use crate::proto::web_form::pages::respond;

/// `/ota/metadata`: `{"hw":…,"ar":…,"fwa":…,"fsa":…,"fwu":…}` — chip family, whether the device
/// reboots itself after an update, the firmware slot's size, the filesystem partition's (0:
/// none), the running image's size.
pub fn metadata(send: &mut dyn FnMut(&[u8]), slot_size: u32, running_len: u32, head_only: bool) {
    let (mut a, mut b) = ([0u8; 10], [0u8; 10]);
    let pieces = [
        "{\"hw\":\"ESP32-C3\",\"ar\":true,\"fwa\":",
        decimal(slot_size, &mut a),
        ",\"fsa\":0,\"fwu\":",
        decimal(running_len, &mut b),
        "}",
    ];
    let extra = [("Cache-Control", "no-cache, no-store, must-revalidate")];
    respond(send, 200, "application/json", &extra, &pieces, head_only);
}

/// `n` in decimal.
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    core::str::from_utf8(&buf[at..]).unwrap_or("0")
}
