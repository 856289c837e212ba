//! The page at `/ota`: `ota_ws_update.html`'s behaviour in our own HTML and script. A person
//! picks a `.bin` (`#otaFileSelect` opens the hidden `#otaFile`), presses `#otaStartCancel`
//! (start, then cancel while it runs); the script sends `otaSize`, then each chunk the device
//! asks for by offset, and shows the progress (`#otaProgress`, `#progressPercent`) and what
//! happened (`#status-text`). After `otaEnd` it offers `#otaReStart`. A socket that opens on a
//! PENDING_VERIFY image shows the `#rollback` card: `#otaVerifyApp` keeps the image,
//! `#otaRollback` goes back. On a lost socket it reloads itself after 2 s, as the original.
//! The socket's URL is the page's own location and `/ws`, `wss:` under `https:`.

/// Sends an answer with `Connection: close` (the page's server keeps no connection).
pub fn respond(
    send: &mut dyn FnMut(&[u8]),
    status: u16,
    content_type: &str,
    pieces: &[&str],
    head_only: bool,
) {
    crate::proto::web_form::pages::respond(send, status, content_type, &[], pieces, head_only);
}

/// The page (under [`crate::proto::http_server::ANSWER_MAX`] with its head: a test checks).
pub const PAGE: &str = r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>OTA update</title>
<style>.hidden{display:none}#bar{width:100%;background:#ddd}#otaProgress{height:1em;width:0;background:#4a4}</style></head><body>
<div id="update"><h1>Firmware update</h1>
<input type="file" id="otaFile" accept=".bin" class="hidden">
<button id="otaFileSelect">Choose file</button> <span id="fileName">no file</span>
<button id="otaStartCancel" disabled>Start</button>
<div id="bar"><div id="otaProgress"></div></div><span id="progressPercent">0 %</span>
<button id="otaReStart" class="hidden">Restart</button></div>
<div id="rollback" class="hidden"><h1>New firmware running</h1><p>Keep it, or go back to the previous one?</p>
<button id="otaVerifyApp">Keep</button> <button id="otaRollback">Roll back</button></div>
<p id="status-text">Connecting</p><button id="goHome">Home</button>
<script>
const $=i=>document.getElementById(i);let ws,file,chunk=8192,busy=false,leaving=false,bye='Connection lost';
const say=t=>$('status-text').textContent=t;
const show=(i,v)=>$(i).classList.toggle('hidden',!v);
function bar(n){const p=file&&file.size?Math.floor(n*100/file.size):0;$('otaProgress').style.width=p+'%';$('progressPercent').textContent=p+' %'}
function send(n,v){ws.send(JSON.stringify({name:n,value:v}))}
function idle(t){busy=false;$('otaStartCancel').textContent='Start';say(t)}
function on(n,v){switch(n){
case'otaCheckRollback':show('rollback',true);show('update',false);say('Keep the new firmware or roll back');break;
case'otaSetChunkSize':chunk=+v;break;
case'otaGetChunk':bar(+v);ws.send(file.slice(+v,+v+chunk));break;
case'otaEnd':bar(file.size);idle('Update complete: restart to run it');show('otaReStart',true);break;
case'otaError':idle('Update failed: '+v);break;
case'otaCancel':idle('Update cancelled');break}}
function connect(){const p=location.pathname;
ws=new WebSocket((location.protocol=='https:'?'wss://':'ws://')+location.host+(p=='/'?'/ws':p.replace(/\/$/,'')+'/ws'));
ws.binaryType='arraybuffer';ws.onopen=()=>say('Ready');
ws.onmessage=e=>{try{const m=JSON.parse(e.data);on(m.name,m.value)}catch(x){say('Bad message: '+e.data)}};
ws.onclose=()=>{if(!leaving){say(bye+': reloading in 2 s');setTimeout(()=>location.reload(),2000)}}}
$('otaFileSelect').onclick=()=>$('otaFile').click();
$('otaFile').onchange=()=>{file=$('otaFile').files[0];$('fileName').textContent=file?file.name:'no file';$('otaStartCancel').disabled=!file};
$('otaStartCancel').onclick=()=>{if(busy){send('otaCancel','');return}busy=true;bar(0);show('otaReStart',false);$('otaStartCancel').textContent='Cancel';say('Uploading '+file.name);send('otaSize',file.size)};
$('otaReStart').onclick=()=>{bye='Restarting';send('otaRestartEsp','');say(bye)};
$('otaVerifyApp').onclick=()=>{send('otaProcessRollback','false');show('rollback',false);show('update',true);say('New firmware kept')};
$('otaRollback').onclick=()=>{bye='Rolling back to the previous firmware';send('otaProcessRollback','true');show('rollback',false);say(bye)};
$('goHome').onclick=()=>{leaving=true;ws.close();location.href='/'};
connect();
</script></body></html>
"#;
